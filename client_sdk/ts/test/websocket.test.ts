// The WebSocket transport against a scripted WebSocket (no server): framing, the call's status, close codes.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  Code, Finished, FinishReason, RilletError, SessionRequest, SessionResponse, Status, closeStatus, tokenSubprotocol,
  webSocketSession, type WebSocketLike,
} from "../src";

class ScriptedSocket implements WebSocketLike {
  static last: ScriptedSocket;
  binaryType = "blob";
  sent: Uint8Array[] = [];
  closed: { code?: number; reason?: string } | undefined;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;

  constructor(readonly url: string, readonly protocols: string[]) {
    ScriptedSocket.last = this;
  }

  send(data: Uint8Array): void {
    this.sent.push(data);
  }

  close(code?: number, reason?: string): void {
    this.closed = { code, reason };
  }

  open(): void {
    this.onopen?.({});
  }

  receive(msg: Partial<SessionResponse>): void {
    const bytes = SessionResponse.encode(SessionResponse.fromPartial(msg)).finish();
    this.onmessage?.({ data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) });
  }

  end(code: number, reason = ""): void {
    this.onclose?.({ code, reason });
  }
}

function open(token?: string): { socket: ScriptedSocket; session: ReturnType<typeof webSocketSession> } {
  const session = webSocketSession("ws://edge/rillet.v1.InferenceService/Session", { token, webSocket: ScriptedSocket });
  return { socket: ScriptedSocket.last, session };
}

const finished = { $case: "finished" as const, value: Finished.fromPartial({ reason: FinishReason.FINISH_REASON_STOP }) };

test("requests started before the handshake are sent once it completes, half-close is an empty message", () => {
  const { socket, session } = open();
  assert.deepEqual(socket.protocols, ["rillet.v1.proto"]);
  assert.equal(socket.binaryType, "arraybuffer");
  session.generate({ params: { prompt: { $case: "text", value: "hi" } } }, { id: "a" });
  assert.equal(socket.sent.length, 0);
  socket.open();
  assert.equal(socket.sent.length, 1);
  assert.equal(SessionRequest.decode(socket.sent[0]).requestId, "a");
  session.end();
  assert.equal(socket.sent[1].length, 0);
});

test("a request's messages reach its iterator; a clean close ends the call OK", async () => {
  const { socket, session } = open();
  socket.open();
  const request = session.generate({ params: { prompt: { $case: "text", value: "hi" } } }, { id: "a" });
  socket.receive({ requestId: "a", seq: 0n, kind: { $case: "tokenDelta", value: { text: "x", tokenIds: [1], logprobs: [] } } });
  socket.receive({ requestId: "a", seq: 1n, kind: finished });
  const kinds: string[] = [];
  for await (const msg of request) kinds.push(msg.kind?.$case ?? "?");
  assert.deepEqual(kinds, ["tokenDelta", "finished"]);
  socket.end(1000);
  await session.wait();
});

test("the call's status message and close code end the session with that error, and fail open requests", async () => {
  const { socket, session } = open();
  socket.open();
  const request = session.generate({ params: { prompt: { $case: "text", value: "hi" } } }, { id: "a" });
  socket.receive({ requestId: "", kind: { $case: "error", value: Status.fromPartial({ code: 14, message: "draining" }) } });
  socket.end(4014, "UNAVAILABLE");
  await assert.rejects(session.wait(), (e: RilletError) => e.code === Code.UNAVAILABLE && e.message.includes("draining"));
  await assert.rejects(async () => { for await (const _ of request) { /* nothing arrives */ } },
    (e: RilletError) => e.code === Code.UNAVAILABLE);
});

test("close codes alone map to canonical codes", () => {
  assert.equal(closeStatus(1000, "", true), undefined);
  assert.equal(closeStatus(4016, "MISSING_TOKEN", true)?.code, Code.UNAUTHENTICATED);
  assert.equal(closeStatus(4016, "MISSING_TOKEN", true)?.reason, "MISSING_TOKEN");
  assert.equal(closeStatus(1009, "", true)?.code, Code.RESOURCE_EXHAUSTED);
  assert.equal(closeStatus(1006, "", false)?.code, Code.UNAVAILABLE);
  assert.match(closeStatus(1006, "", false)?.message ?? "", /handshake failed/);
  assert.equal(closeStatus(1011, "keepalive ping timeout", true)?.code, Code.UNAVAILABLE);
});

test("close() cancels the call: the socket closes and open requests end CANCELLED", async () => {
  const { socket, session } = open();
  socket.open();
  const request = session.generate({ params: { prompt: { $case: "text", value: "hi" } } }, { id: "a" });
  session.close();
  assert.equal(socket.closed?.code, 1000);
  socket.end(1000);
  await assert.rejects(async () => { for await (const _ of request) { /* nothing */ } },
    (e: RilletError) => e.code === Code.CANCELLED);
});

test("a text message, or bytes that are no SessionResponse, break the contract: the session closes 1002", async () => {
  for (const data of ["{}", new Uint8Array([0xff, 0xff, 0xff]).buffer]) {
    const { socket, session } = open();
    socket.open();
    socket.onmessage?.({ data });
    assert.equal(socket.closed?.code, 1002);
    socket.end(1002);
    await assert.rejects(session.wait(), (e: RilletError) => e.name === "ProtocolError");
  }
});

test("a token travels as an unpadded base64url subprotocol of its UTF-8 bytes", () => {
  assert.equal(tokenSubprotocol("tok?>"), "rillet.bearer.dG9rPz4");
  assert.equal(tokenSubprotocol("é"), "rillet.bearer.w6k");
  const { socket } = open("secret");
  assert.deepEqual(socket.protocols, ["rillet.v1.proto", "rillet.bearer.c2VjcmV0"]);
});

test("a refused start is matched by its message index, never by its clipped id", async () => {
  const { socket, session } = open();
  socket.open();
  const prefix = "p".repeat(64);
  const prompt = { params: { prompt: { $case: "text" as const, value: "hi" } } };
  const valid = session.generate(prompt, { id: `${prefix}-valid` });
  const refused = session.generate(prompt, { id: `${prefix}${"x".repeat(100)}` });
  const status = Status.fromPartial({ code: Code.INVALID_ARGUMENT, message: "id too long" });
  socket.receive({ requestId: `${prefix}…`, kind: { $case: "rejected", value: status }, clientMessageIndex: 1n });
  await assert.rejects(async () => { for await (const _ of refused) { /* nothing arrives */ } },
    (e: RilletError) => e.rejected && e.requestId === refused.id && e.clientMessageIndex === 1n);
  socket.receive({ requestId: valid.id, seq: 0n, kind: finished });
  const kinds: string[] = [];
  for await (const msg of valid) kinds.push(msg.kind?.$case ?? "?");
  assert.deepEqual(kinds, ["finished"]);
});
