// The TypeScript runner of Rillet's conformance suite: plays tests/conformance/scenarios.json through this package
// against a live server and prints one JSON line per scenario.
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import { type Client, makeGenericClientConstructor, credentials } from "@grpc/grpc-js";
import { BinaryReader, BinaryWriter } from "@bufbuild/protobuf/wire";

import {
  type AudioChunk, type DeepPartial, FinishReason, type GenerateParams, type Model, Model_Kind, Priority,
  RilletClient, RilletError, type Session, type SessionRequestHandle, type SessionResponse, type SpokenText,
  webSocketSession,
} from "../src";

const CONTROL_OPS = new Set(["server_info", "tokenize", "count_tokens", "detokenize", "abort", "load", "orca"]);

interface OrcaReport {
  cpuUtilization: number;
  rpsFractional: number;
  applicationUtilization: number;
  namedMetrics: Map<string, number>;
}

/** One report of gRPC's standard out-of-band ORCA stream, decoded by hand (the fields the steps check). */
async function orcaReport(target: string): Promise<OrcaReport> {
  const decode = (bytes: Buffer): OrcaReport => {
    const reader = new BinaryReader(bytes);
    const report: OrcaReport = { cpuUtilization: 0, rpsFractional: 0, applicationUtilization: 0, namedMetrics: new Map() };
    while (reader.pos < reader.len) {
      const tag = reader.uint32();
      const field = tag >>> 3;
      if (field === 1) report.cpuUtilization = reader.double();
      else if (field === 6) report.rpsFractional = reader.double();
      else if (field === 9) report.applicationUtilization = reader.double();
      else if (field === 8) {
        const entry = new BinaryReader(reader.bytes());
        let key = "";
        let value = 0;
        while (entry.pos < entry.len) {
          const entryTag = entry.uint32();
          if (entryTag >>> 3 === 1) key = entry.string();
          else if (entryTag >>> 3 === 2) value = entry.double();
          else entry.skip(entryTag & 7);
        }
        report.namedMetrics.set(key, value);
      } else reader.skip(tag & 7);
    }
    return report;
  };
  const Orca = makeGenericClientConstructor({
    StreamCoreMetrics: {
      path: "/xds.service.orca.v3.OpenRcaService/StreamCoreMetrics", requestStream: false, responseStream: true,
      requestSerialize: () => Buffer.alloc(0), requestDeserialize: () => ({}),
      responseSerialize: () => Buffer.alloc(0), responseDeserialize: decode,
    },
  }, "OpenRcaService");
  const client = new Orca(target, credentials.createInsecure()) as Client & Record<string, Function>;
  const call = client.StreamCoreMetrics({});
  call.on("error", () => {});
  try {
    for await (const report of call as AsyncIterable<OrcaReport>) return report;
    throw new Failed("the ORCA stream ended with no report");
  } finally {
    call.cancel();
    client.close();
  }
}

const WAIT_MS = 30_000; // a bound on every wait: a scenario that would hang fails instead

type Step = Record<string, unknown> & { op: string };

class Failed extends Error {}

function check(condition: boolean, message: string): asserts condition {
  if (!condition) throw new Failed(message);
}

function within<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Failed(`timed out waiting for ${what}`)), WAIT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

interface Tracked {
  request: SessionRequestHandle;
  outputs: SessionResponse[];
  firstOutput: Promise<void>;
  terminal: Promise<{ finished?: SessionResponse; error?: RilletError }>;
}

function track(request: SessionRequestHandle): Tracked {
  const outputs: SessionResponse[] = [];
  let first: () => void = () => {};
  const firstOutput = new Promise<void>((resolve) => (first = resolve));
  const terminal = (async () => {
    try {
      for await (const msg of request) {
        if (msg.kind?.$case === "finished") return { finished: msg };
        outputs.push(msg);
        first();
      }
      throw new Failed(`${request.id}: no terminal message`);
    } catch (error) {
      if (error instanceof RilletError) return { error };
      throw error;
    }
  })();
  return { request, outputs, firstOutput, terminal };
}

function checkError(step: Step, error: RilletError | undefined): void {
  check(error !== undefined, `expected ${step.code}, got no error`);
  check(error.codeName === step.code, `code ${error.codeName}, expected ${step.code} (${error.message})`);
  if (step.reason) check(error.reason === step.reason, `reason ${error.reason}, expected ${step.reason}`);
  if (step.domain) check(error.domain === step.domain, `domain ${error.domain}, expected ${step.domain}`);
}

function checkCount(step: Step, n: number, tokens: number): void {
  if (typeof step.tokens === "number") check(tokens === step.tokens, `${tokens} tokens, expected ${step.tokens}`);
  if (typeof step.min_outputs === "number") check(n >= step.min_outputs, `${n} outputs, expected ≥ ${step.min_outputs}`);
}

/** The params of a generate step: its prompt, max_tokens and output constraint (the `constraint` object's one key). */
function generateParams(step: Step): DeepPartial<GenerateParams> {
  const params: DeepPartial<GenerateParams> = {
    prompt: { $case: "text", value: step.prompt as string }, maxTokens: step.max_tokens as number,
    priority: step.priority === "batch" ? Priority.PRIORITY_BATCH : undefined,
  };
  for (const [kind, value] of Object.entries((step.constraint ?? {}) as Record<string, unknown>)) {
    if (kind === "json_schema") params.constraint = { $case: "jsonSchema", value: JSON.stringify(value) };
    else if (kind === "regex") params.constraint = { $case: "regex", value: value as string };
    else if (kind === "grammar") params.constraint = { $case: "grammar", value: value as string };
    else if (kind === "choice") params.constraint = { $case: "choice", value: { options: value as string[] } };
    else if (kind === "json_object") params.constraint = { $case: "jsonObject", value: {} };
    else throw new Failed(`unknown constraint ${kind}`);
  }
  return params;
}

/** The whole text matches `matches` (a regular expression, whole text) and is one JSON document when `json`. */
function checkText(step: Step, text: string): void {
  if (typeof step.matches === "string") {
    check(new RegExp(`^(?:${step.matches})$`, "u").test(text), `text ${JSON.stringify(text)} does not match ${step.matches}`);
  }
  if (step.json === true) {
    try {
      JSON.parse(text);
    } catch (error) {
      throw new Failed(`text ${JSON.stringify(text)} is not JSON: ${(error as Error).message}`);
    }
  }
}

/** The text of the deltas among the messages' kinds. */
function textOf(kinds: Array<{ $case: string; value: unknown } | undefined>): string {
  return kinds.map((k) => (k?.$case === "tokenDelta" ? (k.value as { text: string }).text : "")).join("");
}

/** Each chunk starts at the sample where the previous one ended. */
function checkAudio(chunks: AudioChunk[]): void {
  let expected = 0n;
  for (const chunk of chunks) {
    check(chunk.offsetSamples === expected, `audio offset ${chunk.offsetSamples}, expected ${expected}`);
    expected += BigInt(chunk.sampleCount);
  }
}

/** Tokens in the deltas: the server may coalesce deltas for a slow reader, never drop or add tokens. */
function tokensOf(kinds: Array<{ $case: string; value: unknown } | undefined>): number {
  return kinds.reduce((n, k) => n + (k?.$case === "tokenDelta" ? (k.value as { tokenIds: number[] }).tokenIds.length : 0), 0);
}

function audioOf(messages: SessionResponse[]): AudioChunk[] {
  return messages.flatMap((m) => (m.kind?.$case === "audioChunk" ? [m.kind.value] : []));
}

/** grpc.health.v1 Watch, encoded by hand: the runner needs nothing more of it. */
function watchHealth(target: string, service: string): AsyncIterable<number> & { cancel(): void } {
  const Health = makeGenericClientConstructor({
    Watch: {
      path: "/grpc.health.v1.Health/Watch", requestStream: false, responseStream: true,
      requestSerialize: (name: string) => Buffer.from(new BinaryWriter().uint32(10).string(name).finish()),
      requestDeserialize: () => "",
      responseSerialize: () => Buffer.alloc(0),
      responseDeserialize: (bytes: Buffer) => {
        const reader = new BinaryReader(bytes);
        let status = 0;
        while (reader.pos < reader.len) {
          const tag = reader.uint32();
          if (tag >>> 3 === 1) status = reader.int32();
          else reader.skip(tag & 7);
        }
        return status;
      },
    },
  }, "Health");
  const client = new Health(target, credentials.createInsecure()) as Client & Record<string, Function>;
  const call = client.Watch(service);
  call.on("error", () => {});
  const stop = call.cancel.bind(call);
  return Object.assign(call as AsyncIterable<number>, { cancel: () => { stop(); client.close(); } });
}

class Runner {
  private session: Session | undefined;
  private readonly requests = new Map<string, Tracked>();
  private closed = false;
  private readonly rejections: RilletError[] = [];
  private rejectionArrived: () => void = () => {};

  constructor(private readonly client: RilletClient, private readonly target: string,
    private readonly serverPid: number, private readonly websocket: string | undefined) {}

  /** The scenario's session: a gRPC call, or with --websocket a session on the WebSocket edge. */
  private open(): Session {
    if (!this.session) {
      const session = this.websocket ? webSocketSession(this.websocket) : this.client.session();
      this.session = session;
      void (async () => {
        for await (const rejection of session.rejections()) {
          this.rejections.push(rejection);
          this.rejectionArrived();
        }
      })();
    }
    return this.session;
  }

  /** `spoken_at_most`: what was heard is said, of at most that many samples; `spoken_as`: the same as another's. */
  private async checkSpoken(step: Step, spoken: SpokenText | undefined): Promise<void> {
    const show = (value: unknown): string =>
      JSON.stringify(value, (_, v: unknown) => (typeof v === "bigint" ? v.toString() : v));
    if (typeof step.spoken_at_most === "number") {
      check(spoken !== undefined, `${step.id}: no spoken text`);
      check(spoken.playedSamples <= BigInt(step.spoken_at_most), `${step.id}: played ${spoken.playedSamples}`);
      const chars = [...spoken.text].length; // code points, as the server counts them
      check(chars === spoken.endChar - spoken.startChar, `${step.id}: ${show(spoken)}`);
    }
    if (typeof step.spoken_as === "string") {
      const { finished } = await within(this.tracked(step.spoken_as).terminal, `${step.spoken_as}'s terminal`);
      const other = finished?.kind?.$case === "finished" ? finished.kind.value.spoken : undefined;
      check(show(other) === show(spoken), `${step.id}: spoken ${show(spoken)}, ${step.spoken_as}'s ${show(other)}`);
    }
  }

  private tracked(id: string): Tracked {
    const t = this.requests.get(id);
    check(t !== undefined, `no request ${id}`);
    return t;
  }

  async step(step: Step): Promise<void> {
    const id = step.id as string;
    switch (step.op) {
      case "generate": {
        const request = this.open().generate({
          params: generateParams(step),
          timeout: typeof step.timeout_ms === "number"
            ? { seconds: BigInt(Math.floor(step.timeout_ms / 1000)), nanos: (step.timeout_ms % 1000) * 1e6 }
            : undefined,
        }, { id });
        this.requests.set(id, track(request));
        return;
      }
      case "synthesize": {
        const request = this.open().synthesize({
          params: { text: (step.text as string | undefined) ?? "" },
          streamingInput: step.streaming_input === true,
          textFromRequestId: (step.text_from as string | undefined) ?? "",
        }, { id });
        this.requests.set(id, track(request));
        return;
      }
      case "append_text":
        return this.tracked(id).request.appendText(step.text as string);
      case "end_input":
        return this.tracked(id).request.endInput();
      case "cancel": {
        const known = this.requests.get(id);
        if (known) return known.request.cancel();
        return this.open().send({ requestId: id, kind: { $case: "cancel", value: {} } });
      }
      case "interrupt":
        return this.tracked(id).request.interrupt(step.played_samples as number);
      case "half_close":
        this.closed = true;
        return this.open().end();
      case "await_output":
        return within(this.tracked(id).firstOutput, `${id}'s first output`);
      case "expect_finished": {
        const t = this.tracked(id);
        const { finished, error } = await within(t.terminal, `${id}'s terminal message`);
        check(finished !== undefined, `${id} failed: ${error?.message}`);
        const reason = finished.kind?.$case === "finished" ? FinishReason[finished.kind.value.reason] : "?";
        check(reason === step.reason, `${id}: reason ${reason}, expected ${step.reason}`);
        checkCount(step, t.outputs.length, tokensOf(t.outputs.map((m) => m.kind)));
        checkText(step, textOf(t.outputs.map((m) => m.kind)));
        await this.checkSpoken(step, finished.kind?.$case === "finished" ? finished.kind.value.spoken : undefined);
        return checkAudio(audioOf(t.outputs));
      }
      case "expect_error": {
        const { error } = await within(this.tracked(id).terminal, `${id}'s terminal message`);
        return checkError(step, error);
      }
      case "expect_rejected": {
        this.open();
        const found = (): RilletError | undefined => this.rejections.find((r) => r.requestId === id);
        while (!found()) {
          await within(new Promise<void>((resolve) => (this.rejectionArrived = resolve)), `a rejection for ${id}`);
        }
        check(found()!.rejected, "not marked rejected");
        return checkError(step, found());
      }
      case "expect_call_end": {
        const session = this.open();
        if (!this.closed) {
          this.closed = true;
          try { session.end(); } catch { /* the call has ended already */ }
        }
        try {
          await within(session.wait(), "the call's end");
          check(step.code === "OK", `the call ended OK, expected ${step.code}`);
        } catch (error) {
          if (error instanceof Failed) throw error;
          checkError(step, error as RilletError);
        }
        return;
      }
      case "drain":
        return this.drain();
      case "call_generate":
        return this.oneShot(step, this.client.generate(
          generateParams(step), { timeoutMs: step.deadline_ms as number | undefined },
        ));
      case "call_synthesize":
        return this.oneShot(step, this.client.synthesize({ text: step.text as string }));
      case "list_models": {
        const models = await this.client.listModels();
        for (const want of step.expect as Array<Record<string, unknown>>) {
          check(models.some((m) => modelLike(m, want)), `no model like ${JSON.stringify(want)}`);
        }
        return;
      }
      default:
        if (!CONTROL_OPS.has(step.op)) throw new Failed(`unknown op ${step.op}`);
        try {
          await this.control(step);
        } catch (error) {
          if (error instanceof Failed || step.code === undefined) throw error;
          return checkError(step, error as RilletError);
        }
        check(step.code === undefined, `${step.op} succeeded, expected ${step.code}`);
    }
  }

  /** The ControlService steps; a failure throws RilletError for the step to check. */
  private async control(step: Step): Promise<void> {
    const chat = (step.chat as Array<[string, string]> | undefined)?.map(([role, content]) => ({ role, content }));
    const prompt = chat ?? (step.prompt as string);
    switch (step.op) {
      case "server_info": {
        const info = await this.client.serverInfo();
        for (const want of step.engines as Array<{ name: string; tokenizer: boolean }>) {
          const engine = info.engines.find((e) => e.name === want.name);
          check(engine !== undefined, `no engine ${want.name}`);
          check(engine.tokenizer === want.tokenizer, `${want.name}: tokenizer ${engine.tokenizer}`);
        }
        return;
      }
      case "tokenize": {
        const ids = await this.client.tokenize(prompt);
        check(JSON.stringify(ids) === JSON.stringify(step.ids), `ids ${ids}, expected ${step.ids}`);
        return;
      }
      case "count_tokens": {
        const count = await this.client.countTokens(prompt);
        check(count.tokenCount === step.tokens, `${count.tokenCount} tokens, expected ${step.tokens}`);
        return;
      }
      case "detokenize": {
        const text = await this.client.detokenize(step.ids as number[]);
        check(text === step.text, `text ${JSON.stringify(text)}, expected ${JSON.stringify(step.text)}`);
        return;
      }
      case "abort": {
        const ended = await this.client.abort(step.target as string);
        check(JSON.stringify(ended) === JSON.stringify(step.ended), `ended ${ended}, expected ${step.ended}`);
        return;
      }
      case "load": {
        const load = await this.client.load();
        const engine = load.engines.find((e) => e.engine === step.engine);
        check(engine !== undefined, `no engine ${step.engine} in the load`);
        const got = [engine.running, engine.waiting, engine.slots];
        check(JSON.stringify(got) === JSON.stringify([step.running, step.waiting, step.slots]),
          `running, waiting, slots: ${got}`);
        return;
      }
      case "orca": {
        const report = await orcaReport(this.target);
        check(report.namedMetrics.get("running") === step.running, `running ${report.namedMetrics.get("running")}`);
        check(report.namedMetrics.has("waiting"), "no waiting metric");
        check(report.applicationUtilization === step.utilization,
          `application_utilization ${report.applicationUtilization}`);
        check(report.rpsFractional >= 0 && report.cpuUtilization >= 0, "negative rates");
        return;
      }
    }
  }

  private async oneShot(
    step: Step, stream: AsyncIterable<{ kind?: { $case: string; value: unknown } | undefined }>,
  ): Promise<void> {
    const chunks: AudioChunk[] = [];
    const kinds: Array<{ $case: string; value: unknown } | undefined> = [];
    let outputs = 0;
    try {
      for await (const msg of stream) {
        if (msg.kind?.$case === "finished") {
          check(step.code === "OK", `finished, expected ${step.code}`);
          const reason = FinishReason[(msg.kind.value as { reason: FinishReason }).reason];
          check(reason === step.reason, `reason ${reason}, expected ${step.reason}`);
          checkCount(step, outputs, tokensOf(kinds));
          checkText(step, textOf(kinds));
          return checkAudio(chunks);
        }
        outputs++;
        kinds.push(msg.kind);
        if (msg.kind?.$case === "audioChunk") chunks.push(msg.kind.value as AudioChunk);
      }
    } catch (error) {
      if (error instanceof Failed) throw error;
      return checkError(step, error as RilletError);
    }
    throw new Failed("the stream ended with no terminal message");
  }

  /** SIGTERM the server, then wait until its health says NOT_SERVING: from then on it refuses new work. */
  private async drain(): Promise<void> {
    process.kill(this.serverPid, "SIGTERM");
    const watch = watchHealth(this.target, "rillet.v1.InferenceService");
    try {
      await within((async () => {
        for await (const status of watch) if (status === 2) return; // NOT_SERVING
      })(), "NOT_SERVING");
    } finally {
      watch.cancel();
    }
  }

  /** Every request ended, and a session still open ends with OK after a half-close (no stray messages). */
  async finish(): Promise<void> {
    if (this.session && !this.closed) await this.step({ op: "expect_call_end", code: "OK" });
    for (const [id, t] of this.requests) await within(t.terminal, `${id}'s terminal message`);
  }

  dispose(): void {
    this.session?.close();
  }
}

function modelLike(model: Model, want: Record<string, unknown>): boolean {
  const fields: Record<string, unknown> = {
    name: model.name, kind: Model_Kind[model.kind], engine: model.engine, is_default: model.isDefault,
    is_test_engine: model.isTestEngine,
  };
  return Object.entries(want).every(([key, value]) => fields[key] === value);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      scenarios: { type: "string" }, target: { type: "string" }, "server-pid": { type: "string" },
      websocket: { type: "string" },
    },
  });
  const suite = JSON.parse(readFileSync(values.scenarios as string, "utf8")) as {
    scenarios: Array<{ name: string; steps: Step[] }>;
  };
  const target = values.target as string;
  // Balanced (grpc-js's weighted_round_robin on the server's ORCA reports) over the one backend: the SDK's fleet
  // mode, played throughout.
  const client = new RilletClient(target, { balancing: "weighted" });
  let failed = false;
  for (const scenario of suite.scenarios) {
    const runner = new Runner(client, target, Number(values["server-pid"]), values.websocket);
    let detail = "";
    try {
      for (const step of scenario.steps) await runner.step(step);
      await runner.finish();
    } catch (error) {
      detail = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    } finally {
      runner.dispose();
    }
    failed ||= detail !== "";
    console.log(JSON.stringify({ scenario: scenario.name, passed: detail === "", detail }));
  }
  client.close();
  process.exit(failed ? 1 : 0);
}

void main();
