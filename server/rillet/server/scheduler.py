"""Admission control in front of each engine, and the routing of model names to engines."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from rillet.server.config import SchedulerConfig
from rillet.server.engine.base import Engine
from rillet.server.errors import NotFound, ResourceExhausted, Unavailable, clip
from rillet.server.types import ModelInfo, ModelKind


class Admission:
    """FIFO admission: at most `slots` requests run at once, at most `max_queue` wait, the rest are refused.

    Invariants: `running` never exceeds `slots`; a released slot passes directly to the oldest waiter, so a
    newcomer can never overtake the queue. A tenant other than "" never has more than its share
    (`tenant_queue_share` of `max_queue`, at least 1) of requests waiting, so one tenant cannot fill the queue.
    """

    def __init__(self, slots: int, max_queue: int, retry_after_s: float, tenant_queue_share: float = 1.0) -> None:
        self._slots = slots
        self._max_queue = max_queue
        self._retry_after_s = retry_after_s
        self._tenant_share = max(1, int(max_queue * tenant_queue_share))
        self._running = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._waiting: collections.Counter[str] = collections.Counter()  # tasks waiting in `admit`, by tenant

    @property
    def running(self) -> int:
        return self._running

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def admit(self, tenant: str = "") -> AsyncIterator[None]:
        """Hold a slot for the duration of the block; ResourceExhausted when the queue or the tenant's share is full."""
        if self._running < self._slots and not self._waiters:
            self._running += 1
        else:
            if len(self._waiters) >= self._max_queue:
                raise ResourceExhausted(
                    f"all {self._slots} slots busy and {len(self._waiters)} requests queued; retry later",
                    retry_after=self._retry_after_s,
                    metadata={"slots": str(self._slots), "queued": str(len(self._waiters))},
                )
            if tenant and self._waiting[tenant] >= self._tenant_share:
                raise ResourceExhausted(
                    f"tenant {tenant!r} already has {self._tenant_share} requests queued for this engine, its share",
                    retry_after=self._retry_after_s,
                    reason="TENANT_QUEUE_SHARE",
                    metadata={"tenant": tenant, "share": str(self._tenant_share)},
                )
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            self._waiting[tenant] += 1
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._release()  # the slot was handed to us just as we were cancelled: pass it on
                elif waiter in self._waiters:
                    # A cancelled waiter may already have been skipped (and popped) by `_release`.
                    self._waiters.remove(waiter)
                raise
            finally:
                self._waiting[tenant] -= 1
                if not self._waiting[tenant]:
                    del self._waiting[tenant]
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the waiter; `running` is unchanged
                return
        self._running -= 1


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request for one model goes."""

    model: ModelInfo
    engine: Engine
    admission: Admission


class Router:
    """Maps model and voice names to their engine and admission queue; owns the engines' lifecycle."""

    def __init__(self, engines: Sequence[Engine], config: SchedulerConfig, *, max_tokens: int | None = None) -> None:
        self._engines = tuple(engines)
        self._config = config
        self._max_tokens = max_tokens  # the server's own bound on max_tokens, published with each text model
        self._routes: dict[str, Route] = {}
        self._defaults: dict[ModelKind, str] = {}
        self._started = False

    def _build_routes(self) -> None:
        """Index the engines' models; run after start, when engines know what they loaded (context, template)."""
        routes: dict[str, Route] = {}
        defaults: dict[ModelKind, str] = {}
        for engine in self._engines:
            admission = Admission(
                engine.slots, self._config.max_queue, self._config.retry_after_s, self._config.tenant_queue_share
            )
            for model in map(self._published, engine.models):
                if model.name in routes:
                    raise ValueError(f"model name {model.name!r} is served by two engines")
                routes[model.name] = Route(model, engine, admission)
                defaults.setdefault(model.kind, model.name)
        self._routes, self._defaults = routes, defaults

    def _published(self, model: ModelInfo) -> ModelInfo:
        """The model as clients see it: max_tokens_limit is what validation enforces (the engine's and ours)."""
        if model.kind is not ModelKind.TEXT_GENERATION or self._max_tokens is None:
            return model
        limit = min(self._max_tokens, model.max_tokens_limit or self._max_tokens)
        return dataclasses.replace(model, max_tokens_limit=limit)

    @property
    def engines(self) -> tuple[Engine, ...]:
        return self._engines

    def models(self) -> list[tuple[ModelInfo, bool]]:
        """Every model with whether it is the default of its kind; Unavailable while the engines warm up."""
        self._check_started()
        return [(r.model, self._defaults.get(r.model.kind) == name) for name, r in self._routes.items()]

    def resolve(self, name: str, kind: ModelKind) -> Route:
        """The route for `name` ("" selects the default of `kind`); NotFound when none matches.

        Unavailable while the engines warm up: the models are not known yet, and the client should retry.
        """
        self._check_started()
        noun = "model" if kind is ModelKind.TEXT_GENERATION else "voice"
        if not name:
            default = self._defaults.get(kind)
            if default is None:
                raise NotFound(f"this server serves no {noun}", reason="NO_DEFAULT_MODEL")
            name = default
        route = self._routes.get(name)
        if route is None or route.model.kind is not kind:
            known = sorted(n for n, r in self._routes.items() if r.model.kind is kind)
            raise NotFound(
                f"unknown {noun} {clip(name)!r}; served: {', '.join(known) or 'none'}",
                reason="MODEL_NOT_FOUND",
                metadata={"model": clip(name)},
            )
        return route

    @property
    def started(self) -> bool:
        """The engines are warm and the routes built."""
        return self._started

    def _check_started(self) -> None:
        if not self._started:
            raise Unavailable("the server is warming up its engines; retry shortly", reason="WARMING_UP")

    def healthy(self) -> bool:
        return all(engine.healthy() for engine in self._engines)

    def active(self) -> int:
        """Requests holding engine resources across all engines."""
        return sum(engine.active for engine in self._engines)

    async def start(self) -> None:
        for engine in self._engines:
            await engine.start()
        self._build_routes()
        self._started = True

    async def aclose(self) -> None:
        for engine in self._engines:
            await engine.aclose()
