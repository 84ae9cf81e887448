// Typed errors: a canonical gRPC code with the server's google.rpc.ErrorInfo and RetryInfo, decoded from the
// `grpc-status-details-bin` trailer (which @grpc/grpc-js leaves undecoded) or from an in-band google.rpc.Status.
import { type Metadata, type ServiceError, status as grpcStatus } from "@grpc/grpc-js";

import { ErrorInfo, RetryInfo } from "./gen/google/rpc/error_details";
import { Status } from "./gen/google/rpc/status";

const ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo";
const RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo";

/** A failed request or call, or a session message the server could not apply (`rejected`). */
export class RilletError extends Error {
  /** Canonical status code (grpc-js `status` enum). */
  readonly code: grpcStatus;
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

  constructor(
    code: grpcStatus,
    message: string,
    fields: { reason?: string; domain?: string; metadata?: Record<string, string>; retryDelayMs?: number;
      requestId?: string; rejected?: boolean } = {},
  ) {
    super(`${grpcStatus[code] ?? code}: ${message}${fields.reason ? ` [${fields.reason}]` : ""}`);
    this.name = "RilletError";
    this.code = code;
    this.reason = fields.reason ?? "";
    this.domain = fields.domain ?? "";
    this.metadata = fields.metadata ?? {};
    this.retryDelayMs = fields.retryDelayMs;
    this.requestId = fields.requestId ?? "";
    this.rejected = fields.rejected ?? false;
  }

  /** The code's name as the proto spells it: "INVALID_ARGUMENT", "UNAVAILABLE", ... */
  get codeName(): string {
    return grpcStatus[this.code] ?? `CODE_${this.code}`;
  }

  /** UNAVAILABLE (starting, draining) and RESOURCE_EXHAUSTED (wait retryDelayMs first) may succeed later. */
  get retryable(): boolean {
    return this.code === grpcStatus.UNAVAILABLE || this.code === grpcStatus.RESOURCE_EXHAUSTED;
  }
}

/** The server broke the stream contract: a seq gap, a message after the terminal one, an unknown request. */
export class ProtocolError extends RilletError {
  constructor(message: string, requestId = "") {
    super(grpcStatus.INTERNAL, message, { requestId });
    this.name = "ProtocolError";
  }
}

/** An error from a google.rpc.Status (in-band `error` and `rejected`, or a call's decoded trailer). */
export function fromStatus(s: Status, requestId = "", rejected = false): RilletError {
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
  return new RilletError(s.code as grpcStatus, s.message, {
    reason: info?.reason, domain: info?.domain, metadata: info?.metadata, retryDelayMs, requestId, rejected,
  });
}

/** A RilletError from anything a grpc-js call throws; RilletErrors pass through unchanged. */
export function toRilletError(error: unknown): RilletError {
  if (error instanceof RilletError) return error;
  const service = error as Partial<ServiceError>;
  if (typeof service.code === "number") {
    const details = (service.metadata as Metadata | undefined)?.get("grpc-status-details-bin")[0];
    if (details instanceof Uint8Array) {
      return fromStatus(Status.decode(details));
    }
    return new RilletError(service.code, service.details ?? String(error));
  }
  return new RilletError(grpcStatus.UNKNOWN, error instanceof Error ? error.message : String(error));
}
