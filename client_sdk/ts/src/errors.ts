// Typed errors: a canonical status code with the server's google.rpc.ErrorInfo and RetryInfo, from an in-band
// google.rpc.Status or a call's decoded status (grpc.ts reads it from gRPC trailers, websocket.ts from the edge).
// Nothing here depends on a transport, so browsers load it as Node does.
import { ErrorInfo, RetryInfo } from "./gen/google/rpc/error_details";
import { Status } from "./gen/google/rpc/status";

const ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo";
const RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo";

/** The canonical status codes (google.rpc.Code): the numbers gRPC uses, so `@grpc/grpc-js`'s `status` compares equal. */
export enum Code {
  OK = 0,
  CANCELLED = 1,
  UNKNOWN = 2,
  INVALID_ARGUMENT = 3,
  DEADLINE_EXCEEDED = 4,
  NOT_FOUND = 5,
  ALREADY_EXISTS = 6,
  PERMISSION_DENIED = 7,
  RESOURCE_EXHAUSTED = 8,
  FAILED_PRECONDITION = 9,
  ABORTED = 10,
  OUT_OF_RANGE = 11,
  UNIMPLEMENTED = 12,
  INTERNAL = 13,
  UNAVAILABLE = 14,
  DATA_LOSS = 15,
  UNAUTHENTICATED = 16,
}

/** A failed request or call, or a session message the server could not apply (`rejected`). */
export class RilletError extends Error {
  /** Canonical status code. */
  readonly code: Code;
  /** ErrorInfo.reason in UPPER_SNAKE_CASE, e.g. "MAX_TOKENS_OUT_OF_RANGE"; "" without ErrorInfo. */
  readonly reason: string;
  /** ErrorInfo.domain ("rillet.dev" for the server's own errors). */
  readonly domain: string;
  /** ErrorInfo.metadata, e.g. { field: "params.max_tokens" }. */
  readonly metadata: Readonly<Record<string, string>>;
  /** RetryInfo.retry_delay in milliseconds; undefined when the server sent none. */
  readonly retryDelayMs: number | undefined;
  /** The session request this error belongs to; "" for a call's own failure. */
  readonly requestId: string;
  /** True for SessionResponse.rejected: a message that changed no request. */
  readonly rejected: boolean;
  /** On a rejection: which of the session's messages it answers, counted from 0 in the order it sent them. */
  readonly clientMessageIndex: bigint | undefined;

  constructor(
    code: Code,
    message: string,
    fields: { reason?: string; domain?: string; metadata?: Record<string, string>; retryDelayMs?: number;
      requestId?: string; rejected?: boolean; clientMessageIndex?: bigint } = {},
  ) {
    super(`${Code[code] ?? code}: ${message}${fields.reason ? ` [${fields.reason}]` : ""}`);
    this.name = "RilletError";
    this.code = code;
    this.reason = fields.reason ?? "";
    this.domain = fields.domain ?? "";
    this.metadata = fields.metadata ?? {};
    this.retryDelayMs = fields.retryDelayMs;
    this.requestId = fields.requestId ?? "";
    this.rejected = fields.rejected ?? false;
    this.clientMessageIndex = fields.clientMessageIndex;
  }

  /** The code's name as the proto spells it: "INVALID_ARGUMENT", "UNAVAILABLE", ... */
  get codeName(): string {
    return Code[this.code] ?? `CODE_${this.code}`;
  }

  /** UNAVAILABLE (starting, draining) and RESOURCE_EXHAUSTED (wait retryDelayMs first) may succeed later. */
  get retryable(): boolean {
    return this.code === Code.UNAVAILABLE || this.code === Code.RESOURCE_EXHAUSTED;
  }
}

/** The server broke the stream contract: a seq gap, a message after the terminal one, an unknown request. */
export class ProtocolError extends RilletError {
  constructor(message: string, requestId = "") {
    super(Code.INTERNAL, message, { requestId });
    this.name = "ProtocolError";
  }
}

/** An error from a google.rpc.Status (in-band `error` and `rejected`, or a call's decoded status). */
export function fromStatus(s: Status, requestId = "", rejected = false, clientMessageIndex?: bigint): RilletError {
  let info: ErrorInfo | undefined;
  let retryDelayMs: number | undefined;
  for (const detail of s.details) {
    if (detail.typeUrl === ERROR_INFO) {
      info = ErrorInfo.decode(detail.value);
    } else if (detail.typeUrl === RETRY_INFO) {
      const delay = RetryInfo.decode(detail.value).retryDelay;
      if (delay) retryDelayMs = Number(delay.seconds) * 1000 + delay.nanos / 1e6;
    }
  }
  return new RilletError(s.code as Code, s.message, {
    reason: info?.reason, domain: info?.domain, metadata: info?.metadata, retryDelayMs, requestId, rejected,
    clientMessageIndex,
  });
}
