// @rillet/client/browser: sessions over Rillet's WebSocket edge, for web pages. Nothing here loads gRPC or Node.
export { Code, ProtocolError, RilletError, fromStatus } from "./errors";
export { type RequestOptions, Session, SessionRequestHandle } from "./session";
export {
  PROTO_SUBPROTOCOL, SESSION_PATH, type WebSocketConstructor, type WebSocketLike, type WebSocketSessionOptions,
  closeStatus, tokenSubprotocol, webSocketSession,
} from "./websocket";
export * from "./messages";
