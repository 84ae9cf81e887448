"""Assembles and runs the server: engines, gRPC services, health, reflection, and the drain on shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from rillet.server.config import EventLoopKind, Settings
from rillet.server.control import Control
from rillet.server.engine import registry
from rillet.server.engine.base import Engine
from rillet.server.load import LoadBoard
from rillet.server.observer import NULL_OBSERVER, Observer
from rillet.server.scheduler import Router
from rillet.server.session import Lifecycle
from rillet.server.session.watchdog import sweep_period
from rillet.server.tenancy import TenantLedger, TenantLimits, cache_scope
from rillet.server.transport import control as control_service
from rillet.server.transport import orca
from rillet.server.transport.auth import CallGate, TokenStore, load_tenants, server_credentials
from rillet.server.transport.handlers import Guard, GuardedRegistry
from rillet.server.transport.reflection import enable_reflection
from rillet.server.transport.servicer import SERVICE_NAME, InferenceServicer, add_to_server
from rillet.server.transport.websocket import NULL_EDGE_OBSERVER, EdgeObserver, WebSocketEdge

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class EngineHealth(HealthServicer):  # type: ignore[misc]  # grpc_health ships no type information
    """grpc.health.v1 that asks the engines before it answers: `probe` runs first on every Check and Watch.

    So health derives from the engines' own `healthy()`, with no polling loop: an engine that died while idle is
    found by the next health probe (Kubernetes sends them periodically) or by the next request it fails with
    EngineDead, and either one starts the drain that ends in NOT_SERVING and exit status 1.
    """

    def __init__(self, probe: Callable[[], Awaitable[None]]) -> None:
        super().__init__()
        self._probe = probe

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        await self._probe()
        return await super().Check(request, context)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        await self._probe()
        await super().Watch(request, context)


def loop_factory(kind: EventLoopKind) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory for `asyncio.Runner` (None: the standard library's loop)."""
    if kind is EventLoopKind.ASYNCIO:
        return None
    try:
        import uvloop
    except ImportError:  # not built for this platform (Windows): the standard loop serves, a little slower
        log.warning("uvloop is not installed here: serving on asyncio's own event loop")
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def tune_collector(gen0_threshold: int) -> None:
    """Once warm: startup's objects leave the collector's scans; young ones are collected less often.

    What startup built (modules, engines, weights' wrappers) is frozen out of every later collection, and young
    objects are collected every `gen0_threshold` allocations rather than every 700: streaming allocates a few
    short-lived objects per token, and at the default the collector took ~7% of a core at 20k tokens/s.
    """
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    if gen0_threshold:
        gc.set_threshold(gen0_threshold, *gc.get_threshold()[1:])
    log.info(
        "collector: %d startup objects frozen in %.0f ms, thresholds %s",
        gc.get_freeze_count(),
        (time.perf_counter() - started) * 1e3,
        gc.get_threshold(),
    )


def connection_age_options(settings: Settings) -> list[tuple[str, int]]:
    """The server's max_connection_age (and its grace) options, when set: old connections get a GOAWAY.

    So clients reconnect and re-resolve, and find replicas added since (a Kubernetes scale-out) without restarting.

    The GOAWAY ends no call: calls open on the old connection go on (for the grace, when one is set), new ones go on
    a new connection. gRPC adds ±10% jitter to the age, so a fleet's clients do not all reconnect at once.
    """
    options: list[tuple[str, int]] = []
    if settings.max_connection_age_s is not None:
        options.append(("grpc.max_connection_age_ms", round(settings.max_connection_age_s * 1000)))
    if settings.max_connection_age_grace_s is not None:
        options.append(("grpc.max_connection_age_grace_ms", round(settings.max_connection_age_grace_s * 1000)))
    return options


def build_engines(settings: Settings) -> list[Engine]:
    """The engines the settings select, from the registry (engine/registry.py), text first.

    Each backend's module is imported only when it is selected, so heavy ones cost nothing otherwise.
    """
    return registry.build(settings)


class RilletServer:
    """One gRPC server process. Health is NOT_SERVING until the engines are warm and again from the drain on."""

    def __init__(
        self,
        settings: Settings,
        engines: Sequence[Engine] | None = None,
        *,
        observer: Observer = NULL_OBSERVER,
        guards: Sequence[Guard] = (),
        edge_observer: EdgeObserver = NULL_EDGE_OBSERVER,
    ) -> None:
        """`observer` hears every request, `guards` wrap every call before the auth gate (telemetry: cli.serve).

        `edge_observer` hears every WebSocket session (the edge runs when `settings.websocket.enabled`).
        """
        self.settings = settings
        self.observer = observer
        self._guards = tuple(guards)
        self.router = Router(
            engines if engines is not None else build_engines(settings),
            settings.scheduler,
            max_tokens=settings.limits.max_tokens,
        )
        self.lifecycle = Lifecycle(on_engine_dead=self._on_engine_dead)
        self.health = EngineHealth(self._check_engines)
        tenants = load_tenants(settings.security)
        self.tenants = TenantLedger(
            {
                name: TenantLimits(t.max_sessions, t.max_requests, cache_scope(name, t.cache_group))
                for name, t in tenants.items()
            },
            max_calls=settings.security.max_calls,
            retry_after_s=settings.scheduler.retry_after_s,
        )
        self._tokens = TokenStore(tenants) if tenants else None
        self.load = LoadBoard(
            self.router,
            window_s=settings.load.window_s,
            open_calls=lambda: self.tenants.calls,
            draining=self._draining,
        )
        self.control = Control(self.router, settings.limits, self.lifecycle, self.load)
        self._report_streams = orca.StreamSlots(settings.load.max_streams)
        self.orca = orca.OrcaService(self.load, settings.load, self._report_streams)
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self.websocket: WebSocketEdge | None = None  # the WebSocket edge, when settings.websocket.enabled
        self._edge_observer = edge_observer
        self._stopping: asyncio.Task[None] | None = None
        self._watching: asyncio.Task[None] | None = None  # the session watchdogs' sweep, while serving
        self.engine_died = False
        self.stopped = asyncio.Event()  # set once a drain (asked for, or after an engine died) has finished

    async def start(self, on_warm: Callable[[], None] | None = None) -> int:
        """Bind, serve health and reflection at once, then warm the engines and report SERVING; returns the port.

        `on_warm` runs once the engines are warm, before SERVING (the process-wide tuning of `serve`).
        """
        limit = self.settings.max_message_bytes
        security = self.settings.security
        server = grpc.aio.server(
            options=[
                # Connections past this are closed at accept, before any handshake (the client sees UNAVAILABLE).
                ("grpc.max_allowed_incoming_connections", security.max_connections),
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # Off unless asked for: with it, a second server on a busy port binds silently and takes half
                # of the new connections. On only for several server processes sharing one port on purpose.
                ("grpc.so_reuseport", int(self.settings.reuse_port)),
                # Find clients that vanished without closing (a dead peer holds engine work until noticed) ...
                ("grpc.keepalive_time_ms", 60_000),
                ("grpc.keepalive_timeout_ms", 20_000),
                ("grpc.keepalive_permit_without_calls", 1),
                # ... and accept the SDK's 30 s pings instead of answering them with GOAWAY ENHANCE_YOUR_CALM.
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                ("grpc.http2.max_ping_strikes", 0),
                *connection_age_options(self.settings),
            ],
        )
        # InferenceService and reflection behind the guards and the auth gate; health is registered beside them, open.
        gated = GuardedRegistry(server, [*self._guards, CallGate(self._tokens, self.tenants)])
        trailer = self.orca.trailer if self.settings.load.per_call_reports else None
        servicer = InferenceServicer(
            self.router, self.settings.limits, self.lifecycle, observer=self.observer, trailer=trailer
        )
        add_to_server(servicer, gated)
        control_servicer = control_service.ControlServicer(
            self.control, self.settings, self._report_streams, self._draining
        )
        control_service.add_to_server(control_servicer, gated)
        # Open like health: gRPC clients open ORCA streams per backend, without call credentials (transport/auth.py).
        orca.add_to_server(self.orca, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        if security.reflection:
            enable_reflection([SERVICE_NAME, control_service.SERVICE_NAME, health_name], gated)  # v1 and v1alpha
        for service in ("", SERVICE_NAME):
            await self.health.set(service, NOT_SERVING)
        address = f"{self.settings.host}:{self.settings.port}"
        try:
            if security.tls.enabled:
                port = server.add_secure_port(address, server_credentials(security.tls))
            else:
                port = server.add_insecure_port(address)
                if self._tokens is not None:
                    log.warning("bearer tokens are on without TLS: they cross the network in plain text")
        except RuntimeError:  # grpc's way of saying the bind failed (port in use, address not local)
            port = 0
        if port == 0:
            raise OSError(f"cannot bind {address}: in use, or not an address of this machine")
        await server.start()
        self._server, self.port = server, port
        if self.settings.websocket.enabled:
            self.websocket = WebSocketEdge(
                self.settings,
                self.router,
                self.lifecycle,
                tokens=self._tokens,
                ledger=self.tenants,
                observer=self.observer,
                edge_observer=self._edge_observer,
            )
            await self.websocket.start()
        await self.router.start()
        limits = self.settings.limits
        period = sweep_period(limits.stall_timeout_s, limits.input_idle_timeout_s)
        if period is not None:
            self._watching = asyncio.create_task(self.lifecycle.watch(period), name="rillet-watchdog")
        if on_warm is not None:
            on_warm()
        for service in ("", SERVICE_NAME):
            await self.health.set(service, SERVING)
        log.info(
            "serving %s on %s:%d", ", ".join(m.name for m, _ in self.router.models()), self.settings.host, self.port
        )
        return self.port

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new work, let requests in flight finish within the grace, then cancel them."""
        if self._stopping is None:
            self._stopping = asyncio.create_task(
                self._drain(self.settings.drain_grace_s if grace_s is None else grace_s)
            )
        await asyncio.shield(self._stopping)

    async def _drain(self, grace_s: float) -> None:
        await self.health.enter_graceful_shutdown()
        self.lifecycle.begin_drain()
        in_flight = self.lifecycle.in_flight()
        log.info("draining: %d requests in flight, grace %.1fs", in_flight, grace_s)
        if not await self.lifecycle.wait_drained(grace_s):
            log.warning("grace period over: cancelling %d requests", self.lifecycle.in_flight())
            self.lifecycle.cancel_all()
            await self.lifecycle.wait_drained(5.0)
        if self._server is not None:
            await self._server.stop(1.0)
        if self.websocket is not None:
            await self.websocket.close()
        await self.router.aclose()
        if self._watching is not None:
            self._watching.cancel()
        log.info("stopped")
        self.stopped.set()

    def _draining(self) -> bool:
        return self.lifecycle.draining

    async def _check_engines(self) -> None:
        """Health probes land here first: an engine that reports itself unhealthy once serving starts the drain."""
        if self._stopping is None and self.router.started and not self.router.healthy():
            self._on_engine_dead()
            await self.health.enter_graceful_shutdown()  # NOT_SERVING before this probe is answered

    def _on_engine_dead(self) -> None:
        log.error("an engine died: draining, then the process exits non-zero so that its supervisor restarts it")
        self.engine_died = True
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._drain(self.settings.drain_grace_s))


async def serve(settings: Settings, server: RilletServer | None = None) -> int:
    """Run until SIGTERM or SIGINT, or until an engine dies, then drain and stop; returns the exit status.

    An engine that dies leaves nothing to serve, so the process drains (other engines' requests finish within the
    grace) and exits 1: Kubernetes or any supervisor restarts it, which also reloads the engine cleanly.
    """
    server = server or RilletServer(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The collector is process-wide, so tuned here and not by every RilletServer (tests run many in one process);
    # before SERVING, so that its one full collection (~0.1 s with the CPU engines loaded) delays no request.
    await server.start(on_warm=lambda: tune_collector(settings.gc_gen0_threshold))
    signalled = asyncio.create_task(stop.wait())
    stopped = asyncio.create_task(server.stopped.wait())
    await asyncio.wait((signalled, stopped), return_when=asyncio.FIRST_COMPLETED)
    signalled.cancel()
    stopped.cancel()
    if stop.is_set():
        log.info("signal received")
    await server.stop()
    return 1 if server.engine_died else 0
