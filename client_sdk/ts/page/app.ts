// The demo page served by Rillet's WebSocket edge (`websocket.page`): a prompt streamed token by token, optionally
// spoken as it streams (Web Audio playing PCM chunks as they arrive), a Stop that cancels, and live readouts.
// Built with @rillet/client's browser entry point; page/build.mjs bundles it into the server's package, beside the
// page's index.html and page.css (server/rillet/server/transport/page/).
import {
  type AudioChunk, type Finished, FinishReason, RilletError, SESSION_PATH, type Session, type SessionRequestHandle,
  webSocketSession,
} from "../src/browser";

/** One prompt's timeline, in performance.now() milliseconds; the page's own record (tests read it too). */
export interface Turn {
  sent: number;
  firstToken?: number;
  lastToken?: number;
  finished?: number;
  reason?: string;
  tokens: number;
  tokenUpdates: number;
  speak: boolean;
  firstAudio?: number;
  playbackStarted?: number;
  speechFinished?: number;
  audioChunks: number;
  chunksAfterPlayback: number;
  audioSeconds: number;
  error?: string;
}

const $ = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;

/** Plays 16-bit PCM chunks back to back as they arrive, on one AudioContext made in a click (autoplay rules). */
class PcmPlayer {
  context: AudioContext | undefined;
  firstStart: number | undefined;
  private next = 0;
  private readonly sources = new Set<AudioBufferSourceNode>();

  unlock(): void {
    this.context ??= new AudioContext();
    void this.context.resume();
  }

  play(chunk: AudioChunk): void {
    const context = this.context;
    if (context === undefined) return;
    const channels = Math.max(chunk.channelCount, 1);
    const frames = Math.floor(chunk.audio.byteLength / 2 / channels);
    if (frames === 0) return;
    const view = new DataView(chunk.audio.buffer, chunk.audio.byteOffset, chunk.audio.byteLength);
    const buffer = context.createBuffer(channels, frames, chunk.sampleRateHertz);
    for (let channel = 0; channel < channels; channel++) {
      const samples = buffer.getChannelData(channel);
      for (let i = 0; i < frames; i++) samples[i] = view.getInt16((i * channels + channel) * 2, true) / 32768;
    }
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(context.destination);
    const start = Math.max(this.next, context.currentTime + 0.03); // a little lead: the first samples are not cut
    source.start(start);
    source.onended = () => this.sources.delete(source);
    this.sources.add(source);
    this.next = start + buffer.duration;
    this.firstStart ??= start;
  }

  /** Whether the first chunk has started sounding (the context's clock is past its start). */
  get playing(): boolean {
    return this.context !== undefined && this.firstStart !== undefined && this.context.currentTime > this.firstStart;
  }

  /** Whether anything scheduled is still to be heard. */
  get busy(): boolean {
    return this.context !== undefined && this.next > this.context.currentTime;
  }

  stop(): void {
    for (const source of this.sources) source.stop();
    this.sources.clear();
    this.next = 0;
    this.firstStart = undefined;
  }
}

class Page {
  readonly turns: Turn[] = [];
  readonly player = new PcmPlayer();
  private session: Session | undefined;
  private running: SessionRequestHandle[] = [];
  private nextId = 0;
  readonly endpoint = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${SESSION_PATH}`;

  constructor() {
    $("endpoint").textContent = this.endpoint;
    $<HTMLFormElement>("ask").addEventListener("submit", (event) => {
      event.preventDefault();
      void this.send();
    });
    $("stop").addEventListener("click", () => this.stop());
    $<HTMLFormElement>("connect").addEventListener("submit", (event) => {
      event.preventDefault();
      this.connect();
    });
    this.connect();
  }

  connect(): void {
    this.session?.close();
    const token = $<HTMLInputElement>("token").value.trim();
    const session = webSocketSession(this.endpoint, {
      token: token || undefined, onOpen: () => this.session === session && this.connection("connected", "ok"),
    });
    this.session = session;
    this.connection("connecting…", "");
    session.wait().then(
      () => this.session === session && this.connection("closed", ""),
      (error: RilletError) => this.session === session && this.connection(describe(error), "bad"),
    );
  }

  private connection(text: string, kind: string): void {
    const pill = $("connection");
    pill.textContent = text;
    pill.className = `pill ${kind}`;
    if (kind === "bad" || text === "closed") this.session = undefined;
  }

  async send(): Promise<void> {
    if (this.running.length > 0) return;
    if (this.session === undefined) this.connect();
    const session = this.session as Session;
    const prompt = $<HTMLTextAreaElement>("prompt").value;
    const speak = $<HTMLInputElement>("speak").checked;
    const maxTokens = Number($<HTMLInputElement>("max-tokens").value) || 64;
    if (speak) this.player.unlock(); // in the click: browsers let audio start only after a gesture
    this.player.stop();
    this.reset(prompt);
    const turn: Turn = {
      sent: performance.now(), tokens: 0, tokenUpdates: 0, speak, audioChunks: 0, chunksAfterPlayback: 0,
      audioSeconds: 0,
    };
    this.turns.push(turn);
    const id = `g${this.nextId++}`;
    try {
      const generation = session.generate({ params: { prompt: { $case: "text", value: prompt }, maxTokens } }, { id });
      this.running = [generation];
      const speech = speak ? session.synthesize({ textFromRequestId: id, params: {} }, { id: `s${id}` }) : undefined;
      if (speech) this.running.push(speech);
      this.busy(true);
      await Promise.all([this.read(generation, turn), speech ? this.listen(speech, turn) : undefined]);
    } catch (error) {
      turn.error = describe(error);
      $("status").textContent = turn.error;
    } finally {
      this.running = [];
      this.busy(false);
    }
  }

  stop(): void {
    for (const request of this.running) request.cancel();
    this.player.stop();
  }

  private async read(generation: SessionRequestHandle, turn: Turn): Promise<void> {
    const answer = $("answer-text");
    for await (const msg of generation) {
      const now = performance.now();
      if (msg.kind?.$case === "tokenDelta") {
        turn.firstToken ??= now;
        turn.lastToken = now;
        turn.tokens += msg.kind.value.tokenIds.length;
        turn.tokenUpdates++;
        answer.append(msg.kind.value.text);
        $("ttft").textContent = ms(turn.firstToken - turn.sent);
        $("tokens").textContent = String(turn.tokens);
        $("tps").textContent = rate(turn);
      } else if (msg.kind?.$case === "finished") {
        turn.finished = now;
        this.finished(turn, msg.kind.value);
      }
    }
  }

  private finished(turn: Turn, finished: Finished): void {
    turn.reason = FinishReason[finished.reason].replace("FINISH_REASON_", "").toLowerCase();
    $("status").textContent = turn.reason;
    const server = finished.timings?.timeToFirstOutput;
    if (turn.firstToken !== undefined && server) {
      $("ttft").innerHTML = `${ms(turn.firstToken - turn.sent)} <small>(${ms(seconds(server) * 1000)})</small>`;
    }
    $("tps").textContent = rate(turn);
  }

  private async listen(speech: SessionRequestHandle, turn: Turn): Promise<void> {
    const watch = setInterval(() => this.watchPlayback(turn), 15);
    try {
      for await (const msg of speech) {
        const now = performance.now();
        if (msg.kind?.$case === "audioChunk") {
          const chunk = msg.kind.value;
          turn.firstAudio ??= now;
          turn.audioChunks++;
          if (turn.playbackStarted !== undefined) turn.chunksAfterPlayback++;
          turn.audioSeconds += chunk.audio.byteLength / 2 / Math.max(chunk.channelCount, 1) / chunk.sampleRateHertz;
          this.player.play(chunk);
          $("ttfa").textContent = ms(turn.firstAudio - turn.sent);
          $("audio").textContent = `${turn.audioSeconds.toFixed(1)} s`;
        } else if (msg.kind?.$case === "finished") {
          turn.speechFinished = now;
          const server = msg.kind.value.timings?.timeToFirstOutput;
          if (turn.firstAudio !== undefined && server) {
            $("ttfa").innerHTML = `${ms(turn.firstAudio - turn.sent)} <small>(${ms(seconds(server) * 1000)})</small>`;
          }
        }
      }
    } finally {
      // Keep watching until what was scheduled has played, so the "speaking" frame ends with the sound.
      const stop = setInterval(() => {
        this.watchPlayback(turn);
        if (!this.player.busy) {
          clearInterval(watch);
          clearInterval(stop);
          $("answer").classList.remove("speaking");
        }
      }, 50);
    }
  }

  private watchPlayback(turn: Turn): void {
    if (turn.playbackStarted === undefined && this.player.playing) turn.playbackStarted = performance.now();
    $("answer").classList.toggle("speaking", this.player.playing && this.player.busy);
  }

  private reset(prompt: string): void {
    $("answer-prompt").textContent = prompt;
    $("answer-text").textContent = "";
    for (const id of ["ttft", "ttfa", "tps", "tokens", "audio"]) $(id).textContent = "–";
    $("status").textContent = "streaming…";
  }

  private busy(running: boolean): void {
    $<HTMLButtonElement>("send").disabled = running;
    $<HTMLButtonElement>("stop").disabled = !running;
  }
}

function ms(value: number): string {
  return `${Math.round(value)} ms`;
}

function seconds(duration: { seconds: bigint; nanos: number }): number {
  return Number(duration.seconds) + duration.nanos / 1e9;
}

function rate(turn: Turn): string {
  if (turn.firstToken === undefined || turn.lastToken === undefined || turn.tokens < 2) return "–";
  const elapsed = (turn.lastToken - turn.firstToken) / 1000;
  return elapsed > 0 ? ((turn.tokens - 1) / elapsed).toFixed(1) : "–";
}

function describe(error: unknown): string {
  if (error instanceof RilletError) return `${error.codeName}${error.reason ? ` ${error.reason}` : ""}`;
  return error instanceof Error ? error.message : String(error);
}

(window as unknown as { rillet: Page }).rillet = new Page();
