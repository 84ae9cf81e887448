// Drives the demo page in Debian's Chromium through playwright-core (no browser download: executablePath) and
// prints what it saw as one JSON line; tests/browser/test_page.py starts the server and judges the facts.
import { parseArgs } from "node:util";

import { type Browser, chromium, type Page } from "playwright-core";

const WAIT_MS = 30_000;

interface Turn {
  sent: number; firstToken?: number; finished?: number; reason?: string; tokens: number; tokenUpdates: number;
  firstAudio?: number; playbackStarted?: number; speechFinished?: number; audioChunks: number;
  chunksAfterPlayback: number; error?: string;
}

type Scenario = (page: Page, url: string, rounds: number) => Promise<Record<string, unknown>>;

async function connected(page: Page, url: string): Promise<void> {
  await page.goto(url);
  await page.waitForSelector("#connection.ok", { timeout: WAIT_MS });
}

function lastTurn(page: Page): Promise<Turn> {
  return page.evaluate(() => {
    const turns = (window as unknown as { rillet: { turns: Turn[] } }).rillet.turns;
    return turns[turns.length - 1];
  });
}

const scenarios: Record<string, Scenario> = {
  /** The page loads and connects; a prompt's answer appears in several visible updates before it completes. */
  async stream(page, url) {
    await connected(page, url);
    await page.evaluate(() => {
      const seen: number[] = [];
      (window as unknown as { mutations: number[] }).mutations = seen;
      new MutationObserver(() => seen.push(performance.now()))
        .observe(document.getElementById("answer-text")!, { childList: true, characterData: true, subtree: true });
    });
    await page.fill("#max-tokens", "24");
    await page.click("#send");
    await page.waitForFunction(() => document.getElementById("status")!.textContent === "length", null,
      { timeout: WAIT_MS });
    const turn = await lastTurn(page);
    const mutations = await page.evaluate(() => (window as unknown as { mutations: number[] }).mutations);
    return {
      turn,
      updatesBeforeFinish: mutations.filter((t) => t < (turn.finished ?? 0)).length,
      answer: await page.textContent("#answer-text"),
      readouts: await page.evaluate(() => Object.fromEntries(["ttft", "tps", "tokens", "status"].map(
        (id) => [id, document.getElementById(id)!.textContent]))),
    };
  },

  /** With Speak on, the audio clock runs (playback started) while audio chunks are still arriving. */
  async speak(page, url) {
    await connected(page, url);
    await page.evaluate(() => {
      const samples: Array<Record<string, unknown>> = [];
      (window as unknown as { samples: unknown }).samples = samples;
      const rillet = (window as unknown as { rillet: { turns: Turn[]; player: { context?: AudioContext } } }).rillet;
      setInterval(() => {
        const turn = rillet.turns[rillet.turns.length - 1];
        if (turn === undefined) return;
        samples.push({
          t: performance.now(), clock: rillet.player.context?.currentTime ?? null,
          state: rillet.player.context?.state ?? null, chunks: turn.audioChunks, done: turn.speechFinished !== undefined,
        });
      }, 20);
    });
    await page.check("#speak");
    await page.fill("#max-tokens", "40");
    await page.click("#send");
    await page.waitForFunction(() => {
      const turns = (window as unknown as { rillet: { turns: Turn[] } }).rillet.turns;
      return turns[turns.length - 1]?.speechFinished !== undefined;
    }, null, { timeout: WAIT_MS });
    return {
      turn: await lastTurn(page),
      samples: await page.evaluate(() => (window as unknown as { samples: unknown }).samples),
      ttfa: await page.textContent("#ttfa"),
    };
  },

  /** Stop during a long answer cancels it: the page reports "cancelled" and nothing more arrives. */
  async stop(page, url) {
    await connected(page, url);
    await page.fill("#max-tokens", "2000");
    await page.click("#send");
    await page.waitForFunction(() => {
      const turns = (window as unknown as { rillet: { turns: Turn[] } }).rillet.turns;
      return (turns[turns.length - 1]?.tokens ?? 0) >= 3;
    }, null, { timeout: WAIT_MS });
    await page.click("#stop");
    await page.waitForFunction(() => document.getElementById("status")!.textContent === "cancelled", null,
      { timeout: WAIT_MS });
    const stopped = await lastTurn(page);
    await page.waitForTimeout(300);
    return { turn: stopped, tokensLater: (await lastTurn(page)).tokens, sendEnabled: await page.isEnabled("#send") };
  },

  /** bench/browser_latency.py: `rounds` turns with Speak on, each TTFT and TTFA as the page measured them. */
  async bench(page, url, rounds) {
    await connected(page, url);
    await page.check("#speak");
    await page.fill("#max-tokens", "8");
    const turns: Array<{ ttftMs: number; ttfaMs: number | null }> = [];
    for (let i = 0; i < rounds; i++) {
      await page.click("#send");
      await page.waitForFunction((n) => {
        const done = (window as unknown as { rillet: { turns: Turn[] } }).rillet.turns;
        return done.length === n && done[n - 1].finished !== undefined && done[n - 1].speechFinished !== undefined;
      }, i + 1, { timeout: WAIT_MS });
      const turn = await lastTurn(page);
      turns.push({ ttftMs: turn.firstToken! - turn.sent, ttfaMs: turn.firstAudio ? turn.firstAudio - turn.sent : null });
      await page.waitForFunction(() => !(document.getElementById("send") as HTMLButtonElement).disabled);
    }
    return { turns };
  },

  /**
   * A page of another origin (`url`: served by the test, on this machine, so that Chromium's Local Network Access
   * rules let it reach a loopback server) opens a WebSocket to the edge: the handshake is refused.
   */
  async "cross-origin"(page, url) {
    await page.goto(url);
    return { origin: new URL(url).origin, ...(await page.evaluate(() => (window as unknown as { outcome: object }).outcome)) };
  },
};

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      url: { type: "string" }, scenario: { type: "string" }, chromium: { type: "string" },
      rounds: { type: "string", default: "1" },
    },
  });
  const scenario = scenarios[values.scenario as string];
  if (scenario === undefined) throw new Error(`unknown scenario ${values.scenario}`);
  let browser: Browser | undefined;
  try {
    browser = await chromium.launch({
      executablePath: values.chromium,
      // Headless Chromium mutes audio but its clock runs; autoplay needs a gesture, which the click on Send is.
      args: ["--autoplay-policy=no-user-gesture-required"],
    });
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on("pageerror", (error) => errors.push(error.message));
    const facts = await scenario(page, values.url as string, Number(values.rounds));
    console.log(JSON.stringify({ ...facts, pageErrors: errors }));
  } finally {
    await browser?.close();
  }
}

main().catch((error: unknown) => {
  console.log(JSON.stringify({ failed: error instanceof Error ? error.message : String(error) }));
  process.exit(1);
});
