// Session: one bidirectional call carrying many requests, each with its own async iterator of messages. The call
// is a gRPC stream (grpc.ts) or a WebSocket (websocket.ts); this module knows neither.
import {
  type DeepPartial, SessionRequest, type SessionResponse, StartGenerate, StartSynthesize,
} from "./gen/rillet/v1/inference_service";
import { Code, ProtocolError, RilletError, fromStatus } from "./errors";
import { AsyncQueue } from "./queue";

/** @internal What a session needs of its call. */
export interface SessionCall {
  write(message: SessionRequest): void;
  /** Half-close: no new requests. */
  end(): void;
  /** Cancel the whole call. */
  cancel(): void;
}

/** @internal What the call tells its session: each message, then once how it ended (undefined: OK). */
export interface SessionEvents {
  message(msg: SessionResponse): void;
  end(error: RilletError | undefined): void;
}

/** Per-request options. */
export interface RequestOptions {
  /** The request's id in the session; a fresh one when unset. */
  id?: string;
  /** Aborting sends Cancel for this request (it then finishes with FINISH_REASON_CANCELLED). */
  signal?: AbortSignal;
}

type Item = { msg?: SessionResponse; error?: RilletError };

/**
 * One request of a session. `for await (const msg of request)` yields its outputs (tokenDelta or audioChunk) and
 * then the `finished` message; a failure (in-band `error`, or the call ending first) is thrown as a RilletError.
 * Iterate once.
 */
export class SessionRequestHandle implements AsyncIterable<SessionResponse> {
  /** @internal */ nextSeq = 0n;
  /** @internal The index of the message that started it: a rejection of that message refused the start. */
  startIndex = -1n;
  /** @internal */ ended = false;
  /** @internal */ readonly queue = new AsyncQueue<Item>();
  /** @internal */ detach: () => void = () => {};

  constructor(readonly id: string, private readonly session: Session) {}

  async *[Symbol.asyncIterator](): AsyncIterator<SessionResponse> {
    for await (const item of this.queue) {
      if (item.error) throw item.error;
      yield item.msg as SessionResponse;
    }
  }

  /** More input for a synthesis started with `streamingInput`. */
  appendText(text: string): void {
    this.session.send({ requestId: this.id, kind: { $case: "appendText", value: { text } } });
  }

  /** Ends a streaming input: the rest is synthesized, then the request finishes. */
  endInput(): void {
    this.session.send({ requestId: this.id, kind: { $case: "endInput", value: {} } });
  }

  /** Asks the server to stop; the request then finishes with FINISH_REASON_CANCELLED. A no-op once it ended. */
  cancel(): void {
    if (!this.ended) this.session.send({ requestId: this.id, kind: { $case: "cancel", value: {} } });
  }

  /**
   * Barge-in on a synthesis: cancels it saying how much of its audio was played (samples at its chunks' rate).
   * Its `finished` then carries `spoken`: the text through the last word played in full, where an agent cuts its
   * history (`spoken.endChar`, in code points); so does the `finished` of the generation it speaks, if that is
   * cancelled next, while still in flight. A no-op once it ended.
   */
  interrupt(playedSamples: number | bigint): void {
    if (!this.ended) {
      const value = { playedSamples: BigInt(playedSamples) };
      this.session.send({ requestId: this.id, kind: { $case: "cancel", value } });
    }
  }
}

/** A multiplexed session. Half-close with `end()`, then `wait()` for the call's end; `close()` cancels it. */
export class Session {
  private readonly call: SessionCall;
  private readonly requests = new Map<string, SessionRequestHandle>();
  private readonly rejectionQueue = new AsyncQueue<RilletError>();
  private nextId = 0;
  private sent = 0n; // messages written: the next one's index, as the server counts them
  private outcome: { error?: RilletError } | undefined;
  private readonly waiters: Array<() => void> = [];

  /** @internal `open` starts the call, which reports to the session through `events`. */
  constructor(open: (events: SessionEvents) => SessionCall) {
    this.call = open({
      message: (msg) => {
        const violation = this.dispatch(msg);
        if (violation) {
          this.finish(violation);
          this.call.cancel();
        }
      },
      end: (error) => this.finish(error),
    });
  }

  /** Starts a generation. */
  generate(start: DeepPartial<StartGenerate>, options: RequestOptions = {}): SessionRequestHandle {
    return this.start({ $case: "startGenerate", value: StartGenerate.fromPartial(start) }, options);
  }

  /** Starts a synthesis (with `streamingInput`, or reading a generation of this session: `textFromRequestId`). */
  synthesize(start: DeepPartial<StartSynthesize>, options: RequestOptions = {}): SessionRequestHandle {
    return this.start({ $case: "startSynthesize", value: StartSynthesize.fromPartial(start) }, options);
  }

  private start(kind: SessionRequest["kind"], options: RequestOptions): SessionRequestHandle {
    if (this.outcome) throw this.outcome.error ?? new RilletError(Code.UNAVAILABLE, "the session has ended");
    const id = options.id ?? `r${this.nextId++}`;
    if (this.requests.has(id)) throw new Error(`request id ${JSON.stringify(id)} is already in flight`);
    const request = new SessionRequestHandle(id, this);
    this.requests.set(id, request);
    request.startIndex = this.sent;
    this.send({ requestId: id, kind });
    const signal = options.signal;
    if (signal) {
      const abort = (): void => request.cancel();
      if (signal.aborted) abort();
      else {
        signal.addEventListener("abort", abort, { once: true });
        request.detach = () => signal.removeEventListener("abort", abort);
      }
    }
    return request;
  }

  /** Writes one raw message, for what the helpers do not cover. */
  send(message: DeepPartial<SessionRequest>): void {
    if (this.outcome) throw this.outcome.error ?? new RilletError(Code.UNAVAILABLE, "the session has ended");
    this.call.write(SessionRequest.fromPartial(message));
    this.sent++;
  }

  /**
   * The server's replies to messages it could not apply (a Cancel for an unknown request, a duplicate start):
   * RilletErrors with `rejected` set. They end no request, except a refused start, whose iterator also throws.
   * Each names the message it answers by `clientMessageIndex`: the session's messages counted from 0 in the order
   * it sent them (`send`'s included), as the server counts them.
   */
  rejections(): AsyncIterable<RilletError> {
    return this.rejectionQueue;
  }

  /** Half-close: no new requests; those in flight run to completion, then the server ends the call. */
  end(): void {
    this.call.end();
  }

  /** Resolves when the call has ended OK; rejects with the RilletError it ended with. */
  async wait(): Promise<void> {
    if (!this.outcome) await new Promise<void>((resolve) => this.waiters.push(resolve));
    if (this.outcome?.error) throw this.outcome.error;
  }

  /** Cancels the call: the server aborts every request still running. */
  close(): void {
    this.call.cancel();
  }

  private finish(error: RilletError | undefined): void {
    if (this.outcome) return;
    this.outcome = { error };
    for (const request of this.requests.values()) {
      request.ended = true;
      request.detach();
      request.queue.push({
        error: error ?? new ProtocolError(`the call ended OK before request ${request.id} finished`, request.id),
      });
      request.queue.close();
    }
    this.requests.clear();
    this.rejectionQueue.close();
    for (const waiter of this.waiters.splice(0)) waiter();
  }

  private dispatch(msg: SessionResponse): RilletError | undefined {
    const id = msg.requestId;
    const kind = msg.kind;
    if (kind?.$case === "rejected") {
      // Matched by the message's index, never by its echoed id (clipped when long, empty when undecodable).
      const index = msg.clientMessageIndex;
      const refused = index === undefined ? undefined : [...this.requests.values()].find((r) => r.startIndex === index);
      const rejection = fromStatus(kind.value, refused?.id ?? id, true, index);
      this.rejectionQueue.push(rejection);
      if (refused) this.end_(refused, { error: rejection });
      return undefined;
    }
    const request = this.requests.get(id);
    if (!request) return new ProtocolError(`a message for request ${id}, which is not in flight`, id);
    if (msg.seq !== request.nextSeq) {
      return new ProtocolError(`request ${id}: seq ${msg.seq}, expected ${request.nextSeq}`, id);
    }
    request.nextSeq++;
    switch (kind?.$case) {
      case "tokenDelta":
      case "audioChunk":
        request.queue.push({ msg });
        return undefined;
      case "finished":
        this.end_(request, { msg });
        return undefined;
      case "error":
        this.end_(request, { error: fromStatus(kind.value, id) });
        return undefined;
      default:
        return new ProtocolError(`request ${id}: a message with no known kind`, id);
    }
  }

  private end_(request: SessionRequestHandle, item: Item): void {
    this.requests.delete(request.id);
    request.ended = true;
    request.detach();
    request.queue.push(item);
    request.queue.close();
  }
}
