// A Session over Rillet's WebSocket edge (server: transport/websocket.py), for browsers and for Node with a
// WebSocket class: the same Session, request iterators and errors as over gRPC, one binary protobuf message per
// WebSocket message. Half-close is an empty message; the call's status arrives as a last message with an empty
// request id, then the close code 4000 + its code.
import { SessionRequest, SessionResponse } from "./gen/rillet/v1/inference_service";
import { Code, ProtocolError, RilletError, fromStatus } from "./errors";
import { Session, type SessionCall, type SessionEvents } from "./session";

/** Where the edge serves sessions. */
export const SESSION_PATH = "/rillet.v1.InferenceService/Session";
/** Binary protobuf messages (what this transport speaks). */
export const PROTO_SUBPROTOCOL = "rillet.v1.proto";
/** The subprotocol that carries a bearer token: browsers cannot set WebSocket headers. */
export const TOKEN_SUBPROTOCOL_PREFIX = "rillet.bearer.";
const STATUS_CLOSE_BASE = 4000;

/** The part of the standard WebSocket this transport uses: the browsers' and Node 22's global `WebSocket`. */
export interface WebSocketLike {
  binaryType: string;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

/** A WebSocket class: `new (url, protocols)`. */
export type WebSocketConstructor = new (url: string, protocols: string[]) => WebSocketLike;

/** Options of a WebSocket session. */
export interface WebSocketSessionOptions {
  /**
   * A bearer token, sent in the handshake as the `rillet.bearer.<base64url>` subprotocol (the server never echoes
   * it). It is readable by any script on the page: give browsers short-lived tokens of a tenant with small limits.
   */
  token?: string;
  /** Aborting closes the session: the server cancels every request still running. */
  signal?: AbortSignal;
  /** The WebSocket class; the global one by default (browsers, Node 22+, Node 20 with --experimental-websocket). */
  webSocket?: WebSocketConstructor;
  /** Called once the handshake has completed (the server accepted the origin and the subprotocol). */
  onOpen?: () => void;
}

/**
 * Opens a session on the edge at `url` (e.g. `wss://host:50080/rillet.v1.InferenceService/Session`). Requests
 * may be started at once: they are sent when the connection opens. A handshake that fails (refused origin,
 * unreachable server) ends the session UNAVAILABLE; the server's refusals (token, limits) carry their own status.
 */
export function webSocketSession(url: string, options: WebSocketSessionOptions = {}): Session {
  const constructor = options.webSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (constructor === undefined) {
    throw new Error("no WebSocket class here: pass options.webSocket (Node 20: run with --experimental-websocket)");
  }
  const protocols = [PROTO_SUBPROTOCOL];
  if (options.token !== undefined) protocols.push(tokenSubprotocol(options.token));
  const session = new Session((events) => webSocketCall(new constructor(url, protocols), events, options.onOpen));
  options.signal?.addEventListener("abort", () => session.close(), { once: true });
  return session;
}

/** `rillet.bearer.` + the token's UTF-8 bytes in unpadded base64url (a subprotocol must be an HTTP token). */
export function tokenSubprotocol(token: string): string {
  const bytes = new TextEncoder().encode(token);
  const base64 = btoa(String.fromCharCode(...bytes));
  return TOKEN_SUBPROTOCOL_PREFIX + base64.replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function webSocketCall(ws: WebSocketLike, events: SessionEvents, onOpen?: () => void): SessionCall {
  ws.binaryType = "arraybuffer";
  const pending: Uint8Array[] = []; // written before the handshake completed
  let opened = false;
  let status: RilletError | undefined; // the call's status, when the server sent one before closing
  let cancelled = false;
  const send = (frame: Uint8Array): void => {
    if (opened) ws.send(frame);
    else pending.push(frame);
  };
  const broken = (message: string): void => {
    status ??= new ProtocolError(message);
    ws.close(1002, "protocol error");
  };
  ws.onopen = () => {
    opened = true;
    for (const frame of pending.splice(0)) ws.send(frame);
    onOpen?.();
  };
  ws.onmessage = (event) => {
    if (!(event.data instanceof ArrayBuffer)) return broken("a text message on the binary subprotocol");
    let msg: SessionResponse;
    try {
      msg = SessionResponse.decode(new Uint8Array(event.data));
    } catch {
      return broken("a message that is not a SessionResponse");
    }
    if (msg.requestId === "" && msg.kind?.$case === "error") {
      status = fromStatus(msg.kind.value);
      return;
    }
    events.message(msg);
  };
  ws.onerror = () => {}; // the close event that follows says how the call ended
  ws.onclose = (event) => {
    if (cancelled) events.end(new RilletError(Code.CANCELLED, "the session was closed by the client"));
    else events.end(status ?? closeStatus(event.code, event.reason, opened));
  };
  return {
    write: (message) => send(SessionRequest.encode(message).finish()),
    end: () => send(new Uint8Array(0)),
    cancel: () => {
      cancelled = true;
      ws.close(1000, "cancelled");
    },
  };
}

/** The call's status from a close code alone (when no status message came first); undefined for OK. */
export function closeStatus(code: number, reason: string, opened: boolean): RilletError | undefined {
  if (code === 1000) return undefined;
  if (code > STATUS_CLOSE_BASE && code <= STATUS_CLOSE_BASE + Code.UNAUTHENTICATED) {
    return new RilletError(code - STATUS_CLOSE_BASE, `the call ended with close code ${code}`, { reason });
  }
  if (code === 1009) {
    // MESSAGE_TOO_LARGE is this client's own label, not a server reason (rillet.v1.ErrorReason): the server's
    // WebSocket library refuses the frame unread and closes 1009, with no ErrorInfo (gRPC's limit sends none either).
    return new RilletError(Code.RESOURCE_EXHAUSTED, "a message was larger than the server accepts",
      { reason: "MESSAGE_TOO_LARGE" });
  }
  if (!opened) {
    return new RilletError(Code.UNAVAILABLE,
      "the WebSocket handshake failed: server unreachable, origin not allowed, or TLS refused");
  }
  return new RilletError(Code.UNAVAILABLE, `the connection closed (${code}${reason ? ` ${reason}` : ""})`);
}
