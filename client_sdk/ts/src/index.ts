// @rillet/client: a TypeScript client for Rillet over @grpc/grpc-js (Node) or the WebSocket edge (browsers and
// Node), with the generated rillet.v1 types. Browsers import "@rillet/client/browser", which loads no gRPC code.
export { type CallOptions, type ClientOptions, RilletClient, WEIGHTED_ROUND_ROBIN, serviceConfig } from "./client";
export { Code, ProtocolError, RilletError, fromStatus } from "./errors";
export {
  ControlServiceClient, ControlServiceService, InferenceServiceClient, InferenceServiceService, toRilletError,
} from "./grpc";
export { type RequestOptions, Session, SessionRequestHandle } from "./session";
export {
  PROTO_SUBPROTOCOL, SESSION_PATH, type WebSocketConstructor, type WebSocketLike, type WebSocketSessionOptions,
  closeStatus, tokenSubprotocol, webSocketSession,
} from "./websocket";
export * from "./messages";
// The reasons as constants (Node entry only: the page bundle would carry the whole enum): ErrorInfo.reason is a
// value's name less its ERROR_REASON_ prefix, e.g. ErrorReason[ErrorReason.ERROR_REASON_QUEUE_FULL].slice(13).
export { ErrorReason } from "./gen/rillet/v1/errors";
