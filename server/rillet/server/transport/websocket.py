"""The WebSocket edge: the Session RPC for browsers, one SessionRequest/SessionResponse per WebSocket message.

Browsers cannot open a bidirectional gRPC stream, so this edge serves the same Session over WebSocket (the
`websockets` library, in the gRPC server's own process and event loop). Each connection is one Session call and
drives a `session.Session` exactly as the servicer does: the same commands, limits, bounds, watchdog, observer and
errors. What differs is only the framing, set here:

- Path `/rillet.v1.InferenceService/Session`. Subprotocol `rillet.v1.proto` (the default): binary messages, each a
  serialized message; `rillet.v1.json`: text messages in the protobuf JSON mapping, for clients without protobuf.
- Half-close (gRPC's end of stream) is an empty message. Anything sent after it ends the call INVALID_ARGUMENT.
- The call's status: OK closes with 1000. Any other status is sent as one last SessionResponse with an empty
  `request_id` and `error` set (the google.rpc.Status with ErrorInfo and RetryInfo), then the connection closes
  with 4000 + the canonical code (4016 UNAUTHENTICATED, 4014 UNAVAILABLE, ...) and the ErrorInfo reason. A
  message over `max_message_bytes` closes it with 1009 (RESOURCE_EXHAUSTED): the library refuses the frame unread.

Backpressure: WebSocket has no per-stream flow control, so the session's own bounds do the work. Outbound, the
writer awaits each send; a send waits while the socket's write buffer is over `WRITE_LIMIT_BYTES`, so a client
that reads slowly holds the writer, its requests' outboxes fill, their engine streams pause, and the stall
watchdog ends requests whose output waits longer than `stall_timeout_s`, as on gRPC. Inbound, the library queues
at most `MAX_QUEUED_FRAMES` frames, then stops reading the socket; the session stops taking them while its
outbound budget is full. Per connection the server holds at most: the session budget, one message being sent,
the write buffer and `MAX_QUEUED_FRAMES` frames of at most `max_message_bytes`.

Security: TLS (wss) and tenants are the server's own. The bearer token comes from the `Authorization: Bearer`
header where a client can set one, else from a `rillet.bearer.<base64url(token)>` subprotocol, which browsers can
send (they cannot set WebSocket headers); the server never selects (echoes) it. Browsers' Origin must be one of
`allowed_origins` (and the page's own origin when the page is served): cross-site WebSocket hijacking is refused
with 403 before any session starts. Clients that send no Origin are not browsers and pass to the token check.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import http
import logging
import socket
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from importlib import resources
from typing import Protocol
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, NegotiationError
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.typing import Origin, Subprotocol

from rillet.server.config import LimitsConfig, Settings
from rillet.server.errors import InvalidArgument, ResourceExhausted, RilletError, Unauthenticated, Unavailable, clip
from rillet.server.observer import NULL_OBSERVER, Observer
from rillet.server.reasons import Reason
from rillet.server.scheduler import Router
from rillet.server.session import Lifecycle, Session
from rillet.server.tenancy import TenantLedger, TenantQuota
from rillet.server.transport import convert
from rillet.server.transport.auth import TokenStore, bearer_token, ssl_context
from rillet.server.transport.servicer import SERVICE_NAME, canonical, off_loop
from rillet.server.types import Command, Malformed
from rillet.v1 import inference_service_pb2 as pb

log = logging.getLogger(__name__)

SESSION_PATH = f"/{SERVICE_NAME}/Session"
PROTO = Subprotocol("rillet.v1.proto")
JSON = Subprotocol("rillet.v1.json")
TOKEN_PREFIX = "rillet.bearer."
"""A subprotocol `rillet.bearer.<base64url of the token, unpadded>` carries a browser's bearer token."""

STATUS_CLOSE_BASE = 4000
"""A call that ends with canonical code c closes with 4000 + c (4000-4999: codes for applications, RFC 6455)."""
MAX_QUEUED_FRAMES = 4
"""Frames the library buffers before it stops reading the socket (each at most `max_message_bytes`)."""
WRITE_LIMIT_BYTES = 64 * 1024
"""A send waits while the socket's write buffer holds more than this."""

Frame = bytes | str


@dataclass(frozen=True, slots=True)
class Codec:
    """How one subprotocol puts a message in a WebSocket message: binary protobuf or the JSON mapping."""

    subprotocol: Subprotocol
    binary: bool

    def decode(self, frame: Frame) -> pb.SessionRequest:
        """A client message; InvalidArgument (UNDECODABLE_MESSAGE) when it is not one in this encoding."""
        if isinstance(frame, str) == self.binary:
            kind = "text" if self.binary else "binary"
            raise InvalidArgument(
                f"a {kind} message on the {self.subprotocol} subprotocol, which carries "
                f"{'binary' if self.binary else 'text'} messages",
                reason=Reason.UNDECODABLE_MESSAGE,
            )
        if isinstance(frame, str):
            return convert.parse_json(frame, pb.SessionRequest)
        return convert.parse(frame, pb.SessionRequest)

    def encode(self, message: pb.SessionResponse) -> Frame:
        if self.binary:
            return message.SerializeToString()
        return json_text(message)


def json_text(message: pb.SessionResponse) -> str:
    """The protobuf JSON mapping of a response, on one line (lowerCamelCase names, 64-bit integers as strings)."""
    from google.protobuf import json_format

    return json_format.MessageToJson(message, indent=None, ensure_ascii=False)


CODECS = {PROTO: Codec(PROTO, binary=True), JSON: Codec(JSON, binary=False)}


def token_protocol(token: str) -> str:
    """The subprotocol that carries `token` (what a browser client offers beside an encoding)."""
    return TOKEN_PREFIX + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def _token(headers: Headers, offered: Sequence[str]) -> str | None:
    """The bearer token of the handshake: the Authorization header, else a token subprotocol; None without one."""
    token = bearer_token([("authorization", value) for value in headers.get_all("Authorization")])
    if token is not None:
        return token
    for protocol in offered:
        if protocol.startswith(TOKEN_PREFIX):
            encoded = protocol.removeprefix(TOKEN_PREFIX)
            try:
                padded = encoded + "=" * (-len(encoded) % 4)
                return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise Unauthenticated("the token subprotocol is not base64url", reason=Reason.INVALID_TOKEN) from None
    return None


def _offered(headers: Headers) -> list[str]:
    return [p.strip() for value in headers.get_all("Sec-WebSocket-Protocol") for p in value.split(",") if p.strip()]


def select_subprotocol(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """The first encoding the client offers; none (binary protobuf) when it offers none; 400 for unknown ones.

    A token subprotocol is never selected: the response would echo the token.
    """
    for protocol in offered:
        if protocol in CODECS:
            return protocol
    unknown = [p for p in offered if not p.startswith(TOKEN_PREFIX)]
    if unknown:
        raise NegotiationError(f"unsupported subprotocol; this server speaks {PROTO} and {JSON}")
    return None


TRACE_HEADERS = frozenset({"traceparent", "tracestate", "baggage"})
"""The handshake headers telemetry is given (W3C trace context); never the token's."""


@dataclass(frozen=True, slots=True)
class EdgeConnection:
    """What telemetry may know of a connection: its W3C trace context headers, its peer and its subprotocol."""

    headers: Mapping[str, str]
    peer: tuple[str, int] | None
    subprotocol: str


class EdgeCall(Protocol):
    """One WebSocket session, as telemetry sees it."""

    def end(self, status: str) -> None:
        """The call ended with the canonical code named `status` ("OK", "CANCELLED", ...)."""


class EdgeObserver(Protocol):
    """Telemetry's hook on the edge (the requests inside a session are heard by the server's Observer)."""

    def session(self, connection: EdgeConnection) -> EdgeCall:
        """A session starts, in the task that serves it (its context is the session's requests' context)."""
        ...

    def refused(self, status: int) -> None:
        """A handshake was answered with HTTP `status` instead of a session (origin, path, capacity, protocol)."""


class _NullCall:
    def end(self, status: str) -> None:
        return None


class _NullEdgeObserver:
    _call = _NullCall()

    def session(self, connection: EdgeConnection) -> EdgeCall:
        return self._call

    def refused(self, status: int) -> None:
        return None


NULL_EDGE_OBSERVER: EdgeObserver = _NullEdgeObserver()


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    content_type: str


_PAGE = {
    "/": ("index.html", "text/html"),
    "/app.js": ("app.js", "text/javascript"),
    "/page.css": ("page.css", "text/css"),
}
_PAGE_HEADERS = (
    # The page loads only its own files and talks only to its own origin (the session endpoint).
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
     "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
)  # fmt: skip


def _load_page() -> dict[str, _Asset]:
    files = resources.files("rillet.server.transport") / "page"
    return {path: _Asset((files / name).read_bytes(), f"{kind}; charset=utf-8") for path, (name, kind) in _PAGE.items()}


def page_origins(scheme: str, host: str, port: int) -> list[str]:
    """The origins a browser gives the page served at host:port (both names of a loopback address)."""
    if host in ("", "0.0.0.0", "::"):
        return []  # any address of the machine: the operator lists the names it is reached by
    names = {host}
    if host in ("127.0.0.1", "localhost", "::1"):
        names |= {"127.0.0.1", "localhost"}
    return sorted(f"{scheme}://{f'[{n}]' if ':' in n else n}:{port}" for n in names)


class WebSocketEdge:
    """Serves Session calls over WebSocket (and, when asked, the demo page) beside the gRPC server.

    Invariant: every connection that completes the handshake is one Session call, held in the tenant ledger and
    the lifecycle like a gRPC Session for its whole life, and ends with exactly one status (module docstring).
    """

    def __init__(
        self,
        settings: Settings,
        router: Router,
        lifecycle: Lifecycle,
        *,
        tokens: TokenStore | None,
        ledger: TenantLedger,
        observer: Observer = NULL_OBSERVER,
        edge_observer: EdgeObserver = NULL_EDGE_OBSERVER,
    ) -> None:
        self._settings = settings
        self._config = settings.websocket
        self._limits: LimitsConfig = settings.limits
        self._router = router
        self._lifecycle = lifecycle
        self._tokens = tokens
        self._ledger = ledger
        self._observer = observer
        self._edge = edge_observer
        self._page = _load_page() if self._config.page else {}
        self._server: Server | None = None
        self.port = 0
        self.origins: list[str] = []

    @property
    def scheme(self) -> str:
        return "wss" if self._settings.security.tls.enabled else "ws"

    @property
    def host(self) -> str:
        return self._config.host if self._config.host is not None else self._settings.host

    @property
    def connections(self) -> int:
        """Connections past their handshake, open now."""
        return len(self._server.connections) if self._server is not None else 0

    async def start(self) -> int:
        """Bind and serve; returns the port."""
        tls = self._settings.security.tls
        sock = socket.create_server(
            (self.host, self._config.port),
            family=socket.AF_INET6 if ":" in self.host else socket.AF_INET,
            reuse_port=self._settings.reuse_port,
        )
        self.port = sock.getsockname()[1]
        http_scheme = "https" if tls.enabled else "http"
        self.origins = sorted({*self._config.allowed_origins, *(page_origins(http_scheme, self.host, self.port)
                                                                  if self._page else ())})  # fmt: skip
        if self._page and not self.origins:
            log.warning("the page is served on every address: list its origins in websocket.allowed_origins")
        if self._tokens is not None and not tls.enabled:
            log.warning("bearer tokens are on without TLS: the WebSocket edge carries them in plain text")
        origins: list[Origin | None] = [Origin(o) for o in self.origins]
        self._server = await serve(
            self._handle,
            sock=sock,
            ssl=ssl_context(tls) if tls.enabled else None,
            origins=[*origins, None],  # None: no Origin header, not a browser (no ambient credentials to abuse)
            select_subprotocol=select_subprotocol,
            process_request=self._process_request,
            process_response=self._process_response,
            compression=None,  # compression costs CPU per message, and a small frame could inflate past the limits
            max_size=self._settings.max_message_bytes,
            max_queue=MAX_QUEUED_FRAMES,
            write_limit=WRITE_LIMIT_BYTES,
            ping_interval=self._config.keepalive_s,
            ping_timeout=self._config.keepalive_s,
            close_timeout=self._config.keepalive_s,  # a peer that does not read cannot take a close frame either
            server_header=None,
        )
        log.info("websocket edge on %s://%s:%d%s", self.scheme, self.host, self.port, SESSION_PATH)
        if self._page:
            log.info("page on %s://%s:%d/", http_scheme, self.host, self.port)
        return self.port

    async def close(self) -> None:
        """Stop accepting connections and close those still open (1001, going away): after the drain."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # ---- handshake --------------------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path != SESSION_PATH:
            asset = self._page.get(path)
            if asset is None:
                return connection.respond(http.HTTPStatus.NOT_FOUND, "Not found\n")
            headers = Headers([("Content-Type", asset.content_type), *_PAGE_HEADERS])
            headers["Content-Length"] = str(len(asset.body))
            return Response(http.HTTPStatus.OK, "OK", headers, asset.body)
        if self.connections >= self._config.max_connections:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "Too many connections\n")
        return None  # the library checks the upgrade, the Origin and the subprotocol next

    def _process_response(self, connection: ServerConnection, request: Request, response: Response) -> None:
        if response.status_code != http.HTTPStatus.SWITCHING_PROTOCOLS and urlsplit(request.path).path == SESSION_PATH:
            self._edge.refused(response.status_code)

    # ---- one session ------------------------------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        request = connection.request
        assert request is not None  # the handshake is done
        codec = CODECS[connection.subprotocol or PROTO]
        address = connection.remote_address
        peer = (str(address[0]), int(address[1])) if isinstance(address, tuple) else None
        trace = {k.lower(): v for k, v in request.headers.raw_items() if k.lower() in TRACE_HEADERS}
        call = self._edge.session(EdgeConnection(trace, peer, codec.subprotocol))
        status = "CANCELLED"
        try:
            status = await self._serve(connection, codec, request.headers)
        finally:
            call.end(status)

    async def _serve(self, connection: ServerConnection, codec: Codec, headers: Headers) -> str:
        """Run the connection's session to its end, then end the call; returns the status it ended with."""
        quota: TenantQuota | None = None
        tail = _Tail(asyncio.current_task())
        sends = _SendWatch(connection, 2 * self._config.keepalive_s)
        error: RilletError | None = None
        try:
            quota = self._admit(headers)
            session = Session(self._router, self._limits, self._lifecycle, observer=self._observer, quota=quota)
            outputs = session.run(self._commands(connection, codec, session, tail))
            async with aclosing(outputs) as stream:  # type: ignore[type-var]
                async for output in stream:
                    sends.since = asyncio.get_running_loop().time()
                    await connection.send(codec.encode(convert.session_response(output)))
                    sends.since = None
        except asyncio.CancelledError:
            if not tail.fired:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]  # our own cancel (_Tail), handled here
            if tail.error is None:
                return "CANCELLED"
            error = tail.error
        except ConnectionClosed as closed:
            return "DEADLINE_EXCEEDED" if sends.aborted else _closed_status(closed)
        except Exception as failure:
            error = canonical(failure)
        finally:
            sends.stop()
            tail.stop()  # before anything below awaits: from here on nothing may cancel this task
            if quota is not None:
                quota.close()
        if error is not None:
            return await _end(connection, codec, error)
        await connection.close()
        return "OK"

    def _admit(self, headers: Headers) -> TenantQuota:
        """The call's tenant (from its token, when tokens are on) holding a place in the ledger."""
        tenant = ""
        if self._tokens is not None:
            token = _token(headers, _offered(headers))
            if token is None:
                raise Unauthenticated(
                    f"this server needs a bearer token: the Authorization header or a {TOKEN_PREFIX}<base64url> "
                    "subprotocol",
                    reason=Reason.MISSING_TOKEN,
                )
            found = self._tokens.tenant(token)
            if found is None:
                raise Unauthenticated("the bearer token is not valid", reason=Reason.INVALID_TOKEN)
            tenant = found
        return self._ledger.open(tenant)

    async def _commands(
        self, connection: ServerConnection, codec: Codec, session: Session, tail: _Tail
    ) -> AsyncIterator[Command]:
        """The client's messages as commands, until its half-close; a session idle past the limit is UNAVAILABLE."""
        idle = self._config.idle_timeout_s or None
        to_command = self._converter(codec)
        while True:
            try:
                async with asyncio.timeout(idle):
                    frame = await connection.recv()
            except TimeoutError:
                if session.in_flight:
                    continue
                raise Unavailable(
                    f"the session sent nothing for {idle:g}s with nothing in flight", reason=Reason.SESSION_IDLE
                ) from None
            if not frame:
                tail.start(connection)
                return
            yield await off_loop(frame, to_command)

    def _converter(self, codec: Codec) -> Callable[[Frame], Command]:
        limits = self._limits

        def to_command(frame: Frame) -> Command:
            """One frame as a command; never raises, so one bad frame cannot end the session."""
            try:
                message = codec.decode(frame)
            except InvalidArgument as error:
                return Malformed("", error)
            try:
                return convert.session_command(message, limits)
            except Exception as error:  # a bug in conversion: this message alone fails
                return Malformed(clip(message.request_id), canonical(error))

        return to_command


class _Tail:
    """Watches the connection after the client's half-close, when the session no longer reads it.

    The client leaving then cancels the session's task (its requests are cancelled, as when a gRPC client
    cancels); a message after the half-close is a broken client and ends the call INVALID_ARGUMENT. `fired` tells
    the session's task that a cancellation was this one.
    """

    def __init__(self, serving: asyncio.Task[object] | None) -> None:
        self._serving = serving
        self._task: asyncio.Task[None] | None = None
        self.fired = False
        self.error: RilletError | None = None

    def start(self, connection: ServerConnection) -> None:
        self._task = asyncio.create_task(self._watch(connection))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self, connection: ServerConnection) -> None:
        try:
            await connection.recv()
        except ConnectionClosed:
            pass
        else:
            self.error = InvalidArgument(
                "a message after the half-close (an empty message)", reason=Reason.MESSAGE_AFTER_HALF_CLOSE
            )
        if self._serving is not None:
            self.fired = True
            self._serving.cancel()


class _SendWatch:
    """Drops a connection whose client takes nothing for `limit_s`: a send waiting that long for the socket.

    The library's keepalive cannot: its ping waits behind the same full write buffer, with no timeout. So the edge
    applies the keepalive's bound (one interval and its timeout) to every send. By then the stall watchdog has
    already ended the session's requests (`stall_timeout_s`); this frees the connection and the session itself.
    """

    def __init__(self, connection: ServerConnection, limit_s: float) -> None:
        self.since: float | None = None  # when the send in progress began (the writer sets and clears it)
        self.aborted = False
        self._connection = connection
        self._limit_s = limit_s
        self._task = asyncio.create_task(self._watch())

    def stop(self) -> None:
        self._task.cancel()

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._limit_s / 4)
            if self.since is not None and loop.time() - self.since > self._limit_s:
                log.warning("a WebSocket client took nothing for %.0fs: dropping its connection", self._limit_s)
                self.aborted = True
                self._connection.transport.abort()
                return


async def _end(connection: ServerConnection, codec: Codec, error: RilletError) -> str:
    """End the call with `error`: its Status as a last message, then a close code that names its code."""
    status = convert.status(error)
    reason = error.reason.encode()[:123].decode(errors="ignore")  # a close reason holds 123 bytes
    try:
        await connection.send(codec.encode(pb.SessionResponse(error=status)))
        await connection.close(STATUS_CLOSE_BASE + status.code, reason)
    except ConnectionClosed:
        pass
    return error.code.name


_CLOSED_BY_LIBRARY = {
    int(CloseCode.MESSAGE_TOO_BIG): ResourceExhausted.code.name,
    int(CloseCode.INVALID_DATA): InvalidArgument.code.name,
    int(CloseCode.PROTOCOL_ERROR): InvalidArgument.code.name,
}


def _closed_status(closed: ConnectionClosed) -> str:
    """The status of a session whose connection closed under it: a protocol error of the client's, or it left."""
    sent = closed.sent
    if sent is not None and sent.code in _CLOSED_BY_LIBRARY and not closed.rcvd_then_sent:
        return _CLOSED_BY_LIBRARY[sent.code]
    return "CANCELLED"
