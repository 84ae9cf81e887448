// RilletClient: the one-shot calls as async iterators, ListModels, sessions and the control plane, over the
// generated grpc-js stubs.
import { type ChannelCredentials, type ChannelOptions, type ClientReadableStream, credentials, Metadata }
  from "@grpc/grpc-js";

import {
  type AbortResponse, type CountTokensResponse, type DetokenizeResponse, type GetLoadResponse,
  type GetServerInfoResponse, type ServerLoad, type TokenizeResponse,
} from "./gen/rillet/v1/control_service";

import { type ChatMessage, GenerateParams } from "./gen/rillet/v1/generation";
import {
  type DeepPartial, type GenerateResponse, type Model, type SynthesizeResponse,
} from "./gen/rillet/v1/inference_service";
import { SynthesizeParams } from "./gen/rillet/v1/speech";
import { ProtocolError, RilletError } from "./errors";
import { ControlServiceClient, InferenceServiceClient, grpcSessionCall, toRilletError } from "./grpc";
import { Session } from "./session";

/** Per-call options. */
export interface CallOptions {
  /** One-shot generate and synthesize only: the request's id, by which abort() from another call finds it. */
  requestId?: string;
  /** Cancels the call: the server aborts the request. */
  signal?: AbortSignal;
  /** The call's deadline, in milliseconds from now; past it the call fails with DEADLINE_EXCEEDED. */
  timeoutMs?: number;
  /** Extra request metadata (e.g. authorization). */
  metadata?: Record<string, string>;
}

/**
 * grpc-js's weighted_round_robin configuration (gRFC A58; grpc-js 1.14 reads snake_case keys only) on the
 * servers' out-of-band ORCA load reports: a backend's weight is its requests per second over its utilization
 * (slots, queue and KV cache in use), so new calls go where there is room. Out-of-band, not per-call: grpc-js
 * 1.14 starves an endpoint with per-call reports, and streams report only when they end.
 */
export const WEIGHTED_ROUND_ROBIN = {
  enable_oob_load_report: true,
  oob_load_reporting_period: "1s",
  blackout_period: "2s",
  weight_update_period: "1s",
  weight_expiration_period: "60s",
};

/**
 * The service config of a connection balanced over every address its target resolves to ("ipv4:a:p,b:p", or
 * "dns:///name:port"): weighted by load reports, or plain round_robin. grpc-js has no client-side health checking
 * (it ignores healthCheckConfig), so a draining backend is not skipped by its health as the Python and Go SDKs
 * skip it; the nearest standard thing here is the retry policy: a one-shot call or control read refused with
 * UNAVAILABLE before its first response (what a draining backend answers) is retried, on the pick the balancer
 * makes next. Sessions and Abort are never retried.
 */
export function serviceConfig(weighted: boolean): string {
  const methods = [
    ...["ListModels", "Generate", "Synthesize"].map((method) => ({ service: "rillet.v1.InferenceService", method })),
    ...["GetServerInfo", "GetLoad", "WatchLoad", "Tokenize", "Detokenize", "CountTokens"]
      .map((method) => ({ service: "rillet.v1.ControlService", method })),
  ];
  return JSON.stringify({
    loadBalancingConfig: [weighted ? { weighted_round_robin: WEIGHTED_ROUND_ROBIN } : { round_robin: {} }],
    methodConfig: [{
      name: methods,
      retryPolicy: {
        maxAttempts: 3, initialBackoff: "0.1s", maxBackoff: "1s", backoffMultiplier: 2,
        retryableStatusCodes: ["UNAVAILABLE"],
      },
    }],
  });
}

/** Connection options. */
export interface ClientOptions {
  /** Defaults to plain text (a server on localhost); use credentials.createSsl(...) for TLS. */
  credentials?: ChannelCredentials;
  /**
   * Balance over every backend the target names ("ipv4:a:p,b:p", "dns:///name:port"): "weighted" by their load
   * reports, or "round_robin". Unset: one backend at a time (grpc-js's pick_first).
   */
  balancing?: "weighted" | "round_robin";
  channelOptions?: ChannelOptions;
  /** Sent with every call, e.g. { authorization: "Bearer ..." }. */
  metadata?: Record<string, string>;
}

/** A client of one Rillet server over one HTTP/2 connection. Close it when done. */
export class RilletClient {
  /** The generated stub, for anything this layer does not cover. */
  readonly stub: InferenceServiceClient;
  /** The generated control-plane stub, on the same channel. */
  readonly control: ControlServiceClient;
  private readonly metadata: Record<string, string>;

  constructor(target: string, options: ClientOptions = {}) {
    const channelOptions: ChannelOptions = { ...options.channelOptions };
    if (options.balancing) channelOptions["grpc.service_config"] = serviceConfig(options.balancing === "weighted");
    const creds = options.credentials ?? credentials.createInsecure();
    this.stub = new InferenceServiceClient(target, creds, channelOptions);
    this.control = new ControlServiceClient(target, creds, { channelOverride: this.stub.getChannel() });
    this.metadata = options.metadata ?? {};
  }

  close(): void {
    this.stub.close();
  }

  /** @internal */
  callMetadata(extra: Record<string, string> = {}): Metadata {
    const metadata = new Metadata();
    for (const [key, value] of Object.entries({ ...this.metadata, ...extra })) metadata.set(key, value);
    return metadata;
  }

  /** Every model and voice the server serves. */
  listModels(options: CallOptions = {}): Promise<Model[]> {
    return new Promise((resolve, reject) => {
      const call = this.stub.listModels({}, this.callMetadata(options.metadata), deadline(options),
        (error, response) => (error ? reject(toRilletError(error)) : resolve(response.models)));
      options.signal?.addEventListener("abort", () => call.cancel(), { once: true });
    });
  }

  /** Streams a generation: token deltas, then one message with `kind.$case === "finished"`. Throws RilletError. */
  generate(params: DeepPartial<GenerateParams>, options: CallOptions = {}): AsyncIterable<GenerateResponse> {
    const request = { params: GenerateParams.fromPartial(params), requestId: options.requestId ?? "" };
    return oneShot(options, () => this.stub.generate(request, this.callMetadata(options.metadata), deadline(options)));
  }

  /** Streams a synthesis: audio chunks, then one message with `kind.$case === "finished"`. Throws RilletError. */
  synthesize(params: DeepPartial<SynthesizeParams>, options: CallOptions = {}): AsyncIterable<SynthesizeResponse> {
    const request = { params: SynthesizeParams.fromPartial(params), requestId: options.requestId ?? "" };
    return oneShot(options, () =>
      this.stub.synthesize(request, this.callMetadata(options.metadata), deadline(options)));
  }

  // The control plane (rillet.v1.ControlService). On a balanced client each call goes to the backend the balancer
  // picks: to ask one backend (abort, notably, reaches only the requests of the server it lands on), use a client
  // of its own address.

  /** What the server is: version, engines (and which tokenize), models, limits, drain state. */
  serverInfo(options: CallOptions = {}): Promise<GetServerInfoResponse> {
    return this.unary<GetServerInfoResponse>(
      (metadata, done) => this.control.getServerInfo({}, metadata, deadline(options), done), options);
  }

  /** The server's load now: per engine, requests running and waiting, KV cache use, recent throughput. */
  async load(options: CallOptions = {}): Promise<ServerLoad> {
    const response = await this.unary<GetLoadResponse>(
      (metadata, done) => this.control.getLoad({}, metadata, deadline(options), done), options);
    return response.load!;
  }

  /** The load at once, then every `intervalMs` (clamped by the server); ends when the server drains. */
  async *watchLoad(intervalMs = 1000, options: Omit<CallOptions, "timeoutMs"> = {}): AsyncGenerator<ServerLoad> {
    const interval = { seconds: BigInt(Math.floor(intervalMs / 1000)), nanos: (intervalMs % 1000) * 1e6 };
    const call = this.control.watchLoad({ interval }, this.callMetadata(options.metadata));
    call.on("error", () => {}); // the iteration below reports errors
    const abort = (): void => call.cancel();
    options.signal?.addEventListener("abort", abort, { once: true });
    try {
      for await (const response of call as AsyncIterable<{ load?: ServerLoad }>) yield response.load!;
    } catch (error) {
      throw error instanceof RilletError ? error : toRilletError(error);
    } finally {
      options.signal?.removeEventListener("abort", abort);
      call.cancel();
    }
  }

  /** The token ids of a prompt (text, or chat messages through the model's template) as generation reads it. */
  async tokenize(prompt: string | ChatMessage[], options: CallOptions & { model?: string } = {}): Promise<number[]> {
    const request = { model: options.model ?? "", prompt: promptOf(prompt) };
    const response = await this.unary<TokenizeResponse>(
      (metadata, done) => this.control.tokenize(request, metadata, deadline(options), done), options);
    return response.tokenIds;
  }

  /** The text of token ids, as the model would print them. */
  async detokenize(tokenIds: number[], options: CallOptions & { model?: string } = {}): Promise<string> {
    const request = { model: options.model ?? "", tokenIds };
    const response = await this.unary<DetokenizeResponse>(
      (metadata, done) => this.control.detokenize(request, metadata, deadline(options), done), options);
    return response.text;
  }

  /** How many tokens a prompt takes, and the model's context length. */
  countTokens(prompt: string | ChatMessage[], options: CallOptions & { model?: string } = {}):
    Promise<CountTokensResponse> {
    const request = { model: options.model ?? "", prompt: promptOf(prompt) };
    return this.unary<CountTokensResponse>((metadata, done) => this.control.countTokens(request, metadata, deadline(options), done),
      options);
  }

  /**
   * Ends this tenant's requests in flight under `requestId`, from whichever call carries them: each ends in its
   * own stream with FINISH_REASON_CANCELLED. Returns the ids ended; RilletError NOT_FOUND (REQUEST_NOT_FOUND) when
   * the tenant has none in flight under that id.
   */
  async abort(requestId: string, options: CallOptions = {}): Promise<string[]> {
    const request = { target: { $case: "requestId" as const, value: requestId } };
    const response = await this.unary<AbortResponse>(
      (metadata, done) => this.control.abort(request, metadata, deadline(options), done), options);
    return response.requestIds;
  }

  /** Ends every request of this tenant in flight on the server; the ids ended. */
  async abortAll(options: CallOptions = {}): Promise<string[]> {
    const request = { target: { $case: "allRequests" as const, value: {} } };
    const response = await this.unary<AbortResponse>(
      (metadata, done) => this.control.abort(request, metadata, deadline(options), done), options);
    return response.requestIds;
  }

  private unary<R>(
    start: (metadata: Metadata, done: (error: Error | null, response: R) => void) => { cancel(): void },
    options: CallOptions,
  ): Promise<R> {
    return new Promise((resolve, reject) => {
      const call = start(this.callMetadata(options.metadata),
        (error, response) => (error ? reject(toRilletError(error)) : resolve(response)));
      options.signal?.addEventListener("abort", () => call.cancel(), { once: true });
    });
  }

  /** Opens a session: many requests on one bidirectional call. `signal` cancels the whole call. */
  session(options: Omit<CallOptions, "timeoutMs"> & { timeoutMs?: number } = {}): Session {
    const call = this.stub.session(this.callMetadata(options.metadata), deadline(options));
    options.signal?.addEventListener("abort", () => call.cancel(), { once: true });
    return new Session(grpcSessionCall(call));
  }
}

function promptOf(prompt: string | ChatMessage[]):
  { $case: "text"; value: string } | { $case: "chat"; value: { messages: ChatMessage[] } } {
  return typeof prompt === "string" ? { $case: "text", value: prompt } : { $case: "chat", value: { messages: prompt } };
}

function deadline(options: CallOptions): { deadline?: Date } {
  return options.timeoutMs === undefined ? {} : { deadline: new Date(Date.now() + options.timeoutMs) };
}

async function* oneShot<M extends { seq: bigint; kind?: { $case: string } | undefined }>(
  options: CallOptions, open: () => ClientReadableStream<M>,
): AsyncGenerator<M> {
  const call = open();
  call.on("error", () => {}); // the iterator below reports errors; this keeps a late CANCELLED from being thrown
  const abort = (): void => call.cancel();
  options.signal?.addEventListener("abort", abort, { once: true });
  let next = 0n;
  try {
    for await (const msg of call as AsyncIterable<M>) {
      if (msg.seq !== next) throw new ProtocolError(`seq ${msg.seq}, expected ${next}`);
      next++;
      yield msg;
      if (msg.kind?.$case === "finished") return;
    }
    throw new ProtocolError("the stream ended with no terminal message");
  } catch (error) {
    throw error instanceof RilletError ? error : toRilletError(error);
  } finally {
    options.signal?.removeEventListener("abort", abort);
    call.cancel(); // a no-op once the call has ended; aborts the request when the caller stopped early
  }
}
