// RilletClient: the one-shot calls as async iterators, ListModels, and sessions, over the generated grpc-js stubs.
import { type ChannelCredentials, type ChannelOptions, type ClientReadableStream, credentials, Metadata }
  from "@grpc/grpc-js";

import { GenerateParams } from "./gen/rillet/v1/generation";
import {
  type DeepPartial, type GenerateResponse, type Model, type SynthesizeResponse,
} from "./gen/rillet/v1/inference_service";
import { SynthesizeParams } from "./gen/rillet/v1/speech";
import { ProtocolError, RilletError } from "./errors";
import { InferenceServiceClient, grpcSessionCall, toRilletError } from "./grpc";
import { Session } from "./session";

/** Per-call options. */
export interface CallOptions {
  /** Cancels the call: the server aborts the request. */
  signal?: AbortSignal;
  /** The call's deadline, in milliseconds from now; past it the call fails with DEADLINE_EXCEEDED. */
  timeoutMs?: number;
  /** Extra request metadata (e.g. authorization). */
  metadata?: Record<string, string>;
}

/** Connection options. */
export interface ClientOptions {
  /** Defaults to plain text (a server on localhost); use credentials.createSsl(...) for TLS. */
  credentials?: ChannelCredentials;
  channelOptions?: ChannelOptions;
  /** Sent with every call, e.g. { authorization: "Bearer ..." }. */
  metadata?: Record<string, string>;
}

/** A client of one Rillet server over one HTTP/2 connection. Close it when done. */
export class RilletClient {
  /** The generated stub, for anything this layer does not cover. */
  readonly stub: InferenceServiceClient;
  private readonly metadata: Record<string, string>;

  constructor(target: string, options: ClientOptions = {}) {
    this.stub = new InferenceServiceClient(
      target, options.credentials ?? credentials.createInsecure(), options.channelOptions,
    );
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
    return oneShot(options, () =>
      this.stub.generate({ params: GenerateParams.fromPartial(params) }, this.callMetadata(options.metadata),
        deadline(options)));
  }

  /** Streams a synthesis: audio chunks, then one message with `kind.$case === "finished"`. Throws RilletError. */
  synthesize(params: DeepPartial<SynthesizeParams>, options: CallOptions = {}): AsyncIterable<SynthesizeResponse> {
    return oneShot(options, () =>
      this.stub.synthesize({ params: SynthesizeParams.fromPartial(params) }, this.callMetadata(options.metadata),
        deadline(options)));
  }

  /** Opens a session: many requests on one bidirectional call. `signal` cancels the whole call. */
  session(options: Omit<CallOptions, "timeoutMs"> & { timeoutMs?: number } = {}): Session {
    const call = this.stub.session(this.callMetadata(options.metadata), deadline(options));
    options.signal?.addEventListener("abort", () => call.cancel(), { once: true });
    return new Session(grpcSessionCall(call));
  }
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
