"""The WebSocket edge through the real server: the Session's semantics over WebSocket, and its hostile clients."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from google.rpc import error_details_pb2, status_pb2
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from rillet.server.app import RilletServer
from rillet.server.config import Settings, SyntheticConfig
from rillet.server.engine.synthetic import SyntheticEngine, synthetic_text
from rillet.server.transport.websocket import SESSION_PATH, EdgeConnection, token_protocol
from rillet.v1 import common_pb2, generation_pb2, speech_pb2
from rillet.v1 import inference_service_pb2 as pb
from tests.conftest import ServerFactory, eventually
from tests.doubles import EchoSpeechEngine, FloodEngine
from tests.integration.test_security import ACME, BETA, Pki, pki, tenants  # noqa: F401  (pki: a fixture)

EDGE = {"websocket": {"enabled": True, "port": 0}}
SLOW = {"synthetic": {"tokens_per_second": 20.0, "first_output_delay_s": 0.0}}


def url(server: RilletServer, scheme: str = "ws") -> str:
    assert server.websocket is not None
    return f"{scheme}://127.0.0.1:{server.websocket.port}{SESSION_PATH}"


def generate(request_id: str, text: str = "hello there", max_tokens: int = 8) -> bytes:
    params = generation_pb2.GenerateParams(text=text, max_tokens=max_tokens)
    return pb.SessionRequest(request_id=request_id, start_generate=pb.StartGenerate(params=params)).SerializeToString()


def cancel(request_id: str) -> bytes:
    return pb.SessionRequest(request_id=request_id, cancel=pb.Cancel()).SerializeToString()


def reason_of(status: status_pb2.Status) -> str:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


async def receive(ws: ClientConnection) -> pb.SessionResponse:
    frame = await asyncio.wait_for(ws.recv(), 10)
    assert isinstance(frame, bytes)
    return pb.SessionResponse.FromString(frame)


async def until_close(ws: ClientConnection, *earlier: pb.SessionResponse) -> list[pb.SessionResponse]:
    """`earlier` and every message until the server closes; checks each request's seq and terminal message."""
    responses = list(earlier)
    try:
        while True:
            responses.append(await receive(ws))
    except ConnectionClosed:
        pass
    check_streams(responses)
    return responses


def check_streams(responses: Sequence[pb.SessionResponse]) -> None:
    seqs: dict[str, int] = {}
    ended: set[str] = set()
    for r in responses:
        if r.WhichOneof("kind") == "rejected" or (r.request_id == "" and r.WhichOneof("kind") == "error"):
            continue
        assert r.request_id not in ended, f"a message after {r.request_id}'s terminal one"
        assert r.seq == seqs.get(r.request_id, 0), f"{r.request_id}: seq {r.seq}"
        seqs[r.request_id] = r.seq + 1
        if r.WhichOneof("kind") in ("finished", "error"):
            ended.add(r.request_id)
    assert ended == set(seqs), f"requests without a terminal message: {set(seqs) - ended}"


def text_of(responses: Sequence[pb.SessionResponse], request_id: str) -> str:
    return "".join(r.token_delta.text for r in responses if r.request_id == request_id)


def terminal(responses: Sequence[pb.SessionResponse], request_id: str) -> pb.SessionResponse:
    return next(r for r in responses if r.request_id == request_id and r.WhichOneof("kind") in ("finished", "error"))


def call_status(responses: Sequence[pb.SessionResponse]) -> status_pb2.Status:
    """The call's status: the last message, with no request id."""
    last = responses[-1]
    assert last.request_id == "", last
    assert last.WhichOneof("kind") == "error", last
    return last.error


async def drain(ws: ClientConnection) -> None:
    """Read until the connection closes (ConnectionClosed)."""
    while True:
        await receive(ws)


@asynccontextmanager
async def session(server: RilletServer, **options: Any) -> AsyncIterator[ClientConnection]:
    async with connect(url(server), open_timeout=5, **options) as ws:
        yield ws


# The Session's semantics --------------------------------------------------------------------------------------------


async def test_a_session_over_websocket_multiplexes_requests_as_over_grpc(make_server: ServerFactory) -> None:
    server = await make_server(**EDGE)
    async with session(server, subprotocols=["rillet.v1.proto"]) as ws:
        assert ws.subprotocol == "rillet.v1.proto"
        for request_id in ("a", "b", "c"):
            await ws.send(generate(request_id, f"prompt {request_id}", max_tokens=6))
        await ws.send(b"")  # half-close: no new requests, these three run to their end
        responses = await until_close(ws)
        assert ws.close_code == 1000
    for request_id in ("a", "b", "c"):
        assert text_of(responses, request_id) == synthetic_text(f"prompt {request_id}", 6)
        assert terminal(responses, request_id).finished.reason == common_pb2.FINISH_REASON_LENGTH
    await eventually(lambda: server.lifecycle.sessions == 0 and server.tenants.calls == 0)


async def test_the_json_subprotocol_speaks_the_protobuf_json_mapping(make_server: ServerFactory) -> None:
    server = await make_server(**EDGE)
    async with session(server, subprotocols=["rillet.v1.json"]) as ws:
        assert ws.subprotocol == "rillet.v1.json"
        await ws.send(json.dumps({"requestId": "j", "startGenerate": {"params": {"text": "hi", "maxTokens": 3}}}))
        await ws.send(json.dumps({"requestId": "j", "startGenerate": {"params": {"text": "again"}}}))
        await ws.send(json.dumps({"requestId": "k", "unknownField": 1}))
        await ws.send(b"\x0a\x01k")  # binary on the JSON subprotocol
        await ws.send("")
        frames = []
        async for frame in ws:
            assert isinstance(frame, str)
            frames.append(json.loads(frame))
    deltas = [f for f in frames if "tokenDelta" in f]
    assert "".join(f["tokenDelta"]["text"] for f in deltas) == synthetic_text("hi", 3)
    own = [f for f in frames if f.get("requestId") == "j" and "rejected" not in f]
    assert [f.get("seq", "0") for f in own] == ["0", "1", "2", "3"]  # 64-bit integers are strings; 0 is omitted
    assert frames[-1] == {"requestId": "j", "seq": "3", "finished": frames[-1]["finished"]}
    rejected = [f["rejected"] for f in frames if "rejected" in f]
    # each names the message it answers, counted as the client sent them (the half-close is no message)
    assert [f["clientMessageIndex"] for f in frames if "rejected" in f] == ["1", "2", "3"]
    assert [r["code"] for r in rejected] == [6, 3, 3]  # duplicate id; unknown field; wrong frame type
    assert [r["details"][0]["reason"] for r in rejected] == [
        "DUPLICATE_REQUEST_ID",
        "UNDECODABLE_MESSAGE",
        "UNDECODABLE_MESSAGE",
    ]


async def test_cancel_ends_the_request_cancelled_and_the_session_goes_on(make_server: ServerFactory) -> None:
    server = await make_server(**EDGE, **SLOW)
    async with session(server) as ws:
        await ws.send(generate("long", max_tokens=1000))
        first = await receive(ws)
        assert first.request_id == "long"
        assert first.HasField("token_delta")
        await ws.send(cancel("long"))
        await ws.send(generate("next", max_tokens=2))
        await ws.send(b"")
        responses = await until_close(ws, first)
    assert terminal(responses, "long").finished.reason == common_pb2.FINISH_REASON_CANCELLED
    assert terminal(responses, "next").finished.reason == common_pb2.FINISH_REASON_LENGTH
    assert server.router.active() == 0


async def test_generate_to_speak_and_streaming_input_work_over_websocket(make_server: ServerFactory) -> None:
    text = SyntheticEngine(SyntheticConfig(tokens_per_second=200.0, first_output_delay_s=0.0))
    server = await make_server([text, EchoSpeechEngine()], **EDGE)
    async with session(server) as ws:
        await ws.send(generate("g", "speak this", max_tokens=5))
        speak = pb.StartSynthesize(text_from_request_id="g", params=speech_pb2.SynthesizeParams())
        await ws.send(pb.SessionRequest(request_id="s", start_synthesize=speak).SerializeToString())
        streaming = pb.StartSynthesize(streaming_input=True, params=speech_pb2.SynthesizeParams(text="a "))
        await ws.send(pb.SessionRequest(request_id="i", start_synthesize=streaming).SerializeToString())
        await ws.send(pb.SessionRequest(request_id="i", append_text=pb.AppendText(text="bc")).SerializeToString())
        await ws.send(b"")  # half-close ends the open input too
        responses = await until_close(ws)
    spoken = sum(len(r.audio_chunk.audio) // 2 for r in responses if r.request_id == "s")
    assert spoken == len(synthetic_text("speak this", 5))  # the echo voice: one sample per character
    assert sum(len(r.audio_chunk.audio) // 2 for r in responses if r.request_id == "i") == 4
    assert {terminal(responses, rid).finished.reason for rid in "gsi"} == {common_pb2.FINISH_REASON_LENGTH,
                                                                           common_pb2.FINISH_REASON_STOP}  # fmt: skip


async def test_the_client_leaving_cancels_its_requests_in_the_engine(make_server: ServerFactory) -> None:
    server = await make_server(**EDGE, **SLOW)
    for half_closed in (False, True):
        async with session(server) as ws:
            await ws.send(generate("long", max_tokens=1000))
            await receive(ws)
            if half_closed:  # the session no longer reads the connection; the edge still sees the client go
                await ws.send(b"")
            assert server.router.active() == 1
        await eventually(lambda: server.router.active() == 0 and server.lifecycle.sessions == 0)
        assert server.tenants.calls == 0


async def test_a_message_after_the_half_close_ends_the_call_invalid_argument(make_server: ServerFactory) -> None:
    server = await make_server(**EDGE, **SLOW)
    async with session(server) as ws:
        await ws.send(generate("long", max_tokens=1000))
        await ws.send(b"")
        await ws.send(generate("late"))
        responses = await until_close(ws)
        assert ws.close_code == 4003
    assert reason_of(call_status(responses)) == "MESSAGE_AFTER_HALF_CLOSE"
    await eventually(lambda: server.router.active() == 0)


async def test_a_request_deadline_and_in_band_errors_are_the_sessions_own(make_server: ServerFactory) -> None:
    server = await make_server(**EDGE, **SLOW)
    async with session(server) as ws:
        start = pb.StartGenerate(params=generation_pb2.GenerateParams(text="x", max_tokens=100000))
        await ws.send(pb.SessionRequest(request_id="bad", start_generate=start).SerializeToString())
        timed = pb.StartGenerate(params=generation_pb2.GenerateParams(text="x", max_tokens=1000))
        timed.timeout.FromMilliseconds(200)
        await ws.send(pb.SessionRequest(request_id="slow", start_generate=timed).SerializeToString())
        await ws.send(b"")
        responses = await until_close(ws)
        assert ws.close_code == 1000  # per-request failures end the requests, not the call
    assert reason_of(terminal(responses, "bad").error) == "MAX_TOKENS_OUT_OF_RANGE"
    assert terminal(responses, "slow").error.code == 4  # DEADLINE_EXCEEDED


async def test_a_session_open_during_a_drain_ends_unavailable(make_server: ServerFactory) -> None:
    server = await make_server(**EDGE, **SLOW, drain_grace_s=5.0)
    async with session(server) as ws:
        await ws.send(generate("running", max_tokens=10))
        first = await receive(ws)
        stopping = asyncio.create_task(server.stop())
        await eventually(lambda: server.lifecycle.draining)
        await ws.send(generate("refused"))
        responses = await until_close(ws, first)
        assert ws.close_code == 4014
    assert terminal(responses, "refused").error.code == 14
    assert terminal(responses, "running").finished.reason == common_pb2.FINISH_REASON_LENGTH
    assert call_status(responses).code == 14
    await stopping


# Hostile clients ----------------------------------------------------------------------------------------------------


async def test_garbage_frames_are_rejected_alone_and_the_session_goes_on(make_server: ServerFactory) -> None:
    server = await make_server(**EDGE, **SLOW)
    async with session(server) as ws:
        await ws.send(generate("good", max_tokens=20))
        for junk in (b"\xff\xff\xff\xff", b"\x0a\xff\x01", "a text frame", b"\x08"):
            await ws.send(junk)
        await ws.send(b"")
        responses = await until_close(ws)
    rejected = [r for r in responses if r.WhichOneof("kind") == "rejected"]
    assert len(rejected) == 4
    assert all(r.rejected.code == 3 and reason_of(r.rejected) == "UNDECODABLE_MESSAGE" for r in rejected)
    assert text_of(responses, "good") == synthetic_text("hello there", 20)


async def test_invalid_utf8_in_a_text_frame_closes_1007(make_server: ServerFactory) -> None:
    server = await make_server(**EDGE)
    # a masked text frame holding invalid UTF-8
    assert await raw_close_code(server, b"\x81\x82" + b"\0\0\0\0" + b"\xc3\x28") == 1007
    await eventually(lambda: server.lifecycle.sessions == 0 and server.tenants.calls == 0)


async def raw_close_code(server: RilletServer, frame: bytes) -> int:
    """Open a session by hand, send `frame` as it is, and return the close code the server answers with."""
    assert server.websocket is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.websocket.port)
    try:
        request = (
            f"GET {SESSION_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{server.websocket.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        writer.write(request.encode())
        assert b"101 Switching Protocols" in await reader.readuntil(b"\r\n\r\n")
        writer.write(frame)
        close = await asyncio.wait_for(reader.read(64), 5)
        assert close[0] == 0x88  # a close frame
        return int.from_bytes(close[2:4], "big")
    finally:
        writer.close()


async def test_a_frame_over_the_limit_closes_1009_unread(make_server: ServerFactory) -> None:
    server = await make_server(**EDGE, max_message_bytes=64 * 1024)
    async with session(server, max_size=None) as ws:
        await ws.send(generate("a"))
        await ws.send(b"\x0a" + b"x" * (64 * 1024))  # one byte over
        with pytest.raises(ConnectionClosed):
            await drain(ws)
        assert ws.close_code == 1009
    # Announced but never sent: a header claiming 1 GiB is refused before a byte of it is read.
    assert await raw_close_code(server, b"\x82\xff" + (2**30).to_bytes(8, "big") + b"\0\0\0\0") == 1009
    await eventually(lambda: server.lifecycle.sessions == 0 and server.tenants.calls == 0)
    async with session(server) as ws:  # the server serves on
        await ws.send(generate("after"))
        await ws.send(b"")
        assert text_of(await until_close(ws), "after") == synthetic_text("hello there", 8)


@pytest.mark.timeout(60)
async def test_a_never_reading_client_stalls_out_holding_bounded_memory(make_server: ServerFactory) -> None:
    """A client that reads nothing: its request ends CLIENT_STALLED, the engine is freed, then its connection.

    What the flood engine could push meanwhile is bounded by what the path holds: the request's outbox (256 KiB)
    and the session budget (4 MiB), the edge's write buffer (64 KiB), the kernel's socket buffers and the client
    library's own queue (4 frames here) — not by how long the client stays.
    """
    flood = FloodEngine(SyntheticConfig(model_name="flood"))
    server = await make_server([flood], limits={"stall_timeout_s": 0.5}, websocket={"enabled": True, "port": 0,
                                                                                  "keepalive_s": 1.0})  # fmt: skip
    async with session(server, max_queue=4, ping_interval=None) as ws:
        sock = ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        await ws.send(generate("stall"))
        await eventually(lambda: flood.active == 1)
        await eventually(lambda: flood.active == 0, timeout=10)  # the watchdog freed the engine
        emitted = flood.emitted
        await asyncio.sleep(1.0)
        assert flood.emitted == emitted  # nothing more is produced for it
        assert emitted * 16 * 1024 < 48 * 1024 * 1024, f"{emitted} deltas of 16 KiB"
        # Its connection goes once a send has waited a keepalive interval and its timeout (2 s here).
        await eventually(lambda: server.lifecycle.sessions == 0 and server.tenants.calls == 0, timeout=10)
        with pytest.raises(ConnectionClosed):
            await drain(ws)


async def test_a_cross_origin_page_is_refused_before_any_session() -> None:
    edge = RecordingEdge()
    settings = Settings(port=0, text_engine="synthetic", speech_engine="none",
                        websocket={"enabled": True, "port": 0, "allowed_origins": ["https://app.example"]})  # fmt: skip
    server = RilletServer(settings, edge_observer=edge)
    await server.start()
    try:
        with pytest.raises(InvalidStatus) as error:
            async with session(server, origin="https://evil.example"):
                pass
        assert error.value.response.status_code == 403
        assert edge.refused_with == [403]
        assert edge.sessions == []
        assert server.tenants.calls == 0
        for origin in ("https://app.example", None):  # the allowed origin, and a client that is no browser
            async with session(server, origin=origin, additional_headers={"traceparent": TRACEPARENT}) as ws:
                await ws.send(b"")
                await until_close(ws)
                assert ws.close_code == 1000
        await eventually(lambda: edge.ended == ["OK", "OK"])
        assert [s.headers["traceparent"] for s in edge.sessions] == [TRACEPARENT, TRACEPARENT]
        assert all(s.subprotocol == "rillet.v1.proto" and s.peer is not None for s in edge.sessions)
    finally:
        await server.stop(grace_s=0)


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class RecordingEdge:
    """An EdgeObserver that records what it hears."""

    def __init__(self) -> None:
        self.refused_with: list[int] = []
        self.sessions: list[EdgeConnection] = []
        self.ended: list[str] = []

    def session(self, connection: EdgeConnection) -> RecordingEdge:
        self.sessions.append(connection)
        return self

    def end(self, status: str) -> None:
        self.ended.append(status)

    def refused(self, status: int) -> None:
        self.refused_with.append(status)


async def test_tokens_come_from_the_header_or_a_subprotocol_and_nothing_else(make_server: ServerFactory) -> None:
    server = await make_server(**EDGE, security={"tenants": tenants()})
    refusals: dict[str, dict[str, Any]] = {
        "MISSING_TOKEN": {},
        "INVALID_TOKEN": {"additional_headers": {"Authorization": "Bearer nope"}},
    }
    for reason, options in refusals.items():
        async with session(server, **options) as ws:
            responses = await until_close(ws)
            assert ws.close_code == 4016
            assert ws.close_reason == reason
        status = call_status(responses)
        assert status.code == 16
        assert reason_of(status) == reason
    # A token in the URL is not one: URLs end up in logs.
    async with connect(url(server) + f"?token={ACME}") as ws:
        await until_close(ws)
        assert ws.close_reason == "MISSING_TOKEN"
    accepted: list[dict[str, Any]] = [
        {"additional_headers": {"Authorization": f"Bearer {ACME}"}},
        {"subprotocols": ["rillet.v1.proto", token_protocol(BETA)]},
    ]
    for options in accepted:
        async with session(server, **options) as ws:
            assert ws.subprotocol in (None, "rillet.v1.proto")  # never the token's
            await ws.send(generate("t"))
            await ws.send(b"")
            assert text_of(await until_close(ws), "t") == synthetic_text("hello there", 8)
            assert ws.close_code == 1000


async def test_a_tenant_past_its_sessions_is_refused_with_retry_info(make_server: ServerFactory) -> None:
    server = await make_server(**EDGE, **SLOW, security={"tenants": tenants(max_sessions=1)})
    auth = {"additional_headers": {"Authorization": f"Bearer {ACME}"}}
    async with session(server, **auth) as first:
        await first.send(generate("hold", max_tokens=100))
        await receive(first)
        async with session(server, **auth) as second:
            responses = await until_close(second)
            assert second.close_code == 4008
        status = call_status(responses)
        assert reason_of(status) == "TENANT_SESSION_LIMIT"
        retry = error_details_pb2.RetryInfo()
        assert any(d.Unpack(retry) for d in status.details)
        assert retry.retry_delay.seconds == 1
    await eventually(lambda: server.tenants.calls == 0)


async def test_connections_past_the_limit_are_refused_503(make_server: ServerFactory) -> None:
    server = await make_server(websocket={"enabled": True, "port": 0, "max_connections": 2})
    async with session(server), session(server):
        await eventually(lambda: server.websocket is not None and server.websocket.connections == 2)
        with pytest.raises(InvalidStatus) as error:
            async with session(server):
                pass
        assert error.value.response.status_code == 503


async def test_an_idle_session_is_closed_but_not_one_with_a_request_in_flight(make_server: ServerFactory) -> None:
    server = await make_server(websocket={"enabled": True, "port": 0, "idle_timeout_s": 0.3}, **SLOW)
    async with session(server) as ws:
        await ws.send(generate("slow", max_tokens=16))  # ~0.8 s of output: longer than the idle limit
        responses = await until_close(ws)
        assert ws.close_code == 4014
        assert ws.close_reason == "SESSION_IDLE"
    assert terminal(responses, "slow").finished.reason == common_pb2.FINISH_REASON_LENGTH
    assert reason_of(call_status(responses)) == "SESSION_IDLE"


async def test_unknown_subprotocols_and_paths_are_refused(make_server: ServerFactory) -> None:
    server = await make_server(**EDGE)
    with pytest.raises(InvalidStatus) as error:
        async with session(server, subprotocols=["graphql-ws"]):
            pass
    assert error.value.response.status_code == 400
    with pytest.raises(InvalidStatus) as error:
        async with connect(url(server).replace(SESSION_PATH, "/elsewhere")):
            pass
    assert error.value.response.status_code == 404


async def test_wss_serves_with_the_servers_tls(make_server: ServerFactory, pki: Pki) -> None:  # noqa: F811
    import ssl

    tls = {"cert_file": pki.server_cert, "key_file": pki.server_key}
    server = await make_server(**EDGE, security={"tls": tls})
    trusting = ssl.create_default_context(cafile=pki.ca)
    async with connect(url(server, "wss"), ssl=trusting) as ws:
        await ws.send(generate("tls"))
        await ws.send(b"")
        assert text_of(await until_close(ws), "tls") == synthetic_text("hello there", 8)
    with pytest.raises(ssl.SSLError):
        async with connect(url(server, "wss"), ssl=ssl.create_default_context(cafile=pki.other_ca)):
            pass


# The page ------------------------------------------------------------------------------------------------------------


async def test_the_page_is_served_only_when_asked_with_a_strict_policy(make_server: ServerFactory) -> None:
    off = await make_server(**EDGE)
    on = await make_server(websocket={"enabled": True, "port": 0, "page": True})
    assert off.websocket is not None
    assert on.websocket is not None
    assert on.websocket.origins == [f"http://127.0.0.1:{on.websocket.port}", f"http://localhost:{on.websocket.port}"]
    status, _, body = await http_get(off.websocket.port, "/")
    assert (status, body) == (404, b"Not found\n")
    status, headers, body = await http_get(on.websocket.port, "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert "connect-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert b'<script src="app.js" defer>' in body
    packaged = Path(__file__).parents[2] / "server/rillet/server/transport/page/app.js"
    assert (await http_get(on.websocket.port, "/app.js"))[2] == packaged.read_bytes()
    assert (await http_get(on.websocket.port, "/../pyproject.toml"))[0] == 404


async def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    lines = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    writer.close()
    return int(lines[0].split()[1]), headers, body
