"""Admission control in front of each engine, and the routing of model names to engines of the right kind."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar, overload

from rillet.server.audio.output import speak
from rillet.server.audio.transcript import Transcript
from rillet.server.config import SchedulerConfig
from rillet.server.engine.base import Engine, SpeechEngine, SpeechEvent, TextEngine, TextEvent
from rillet.server.errors import NotFound, ResourceExhausted, Unavailable, clip
from rillet.server.types import AudioOutput, GenerationRequest, ModelInfo, ModelKind, SynthesisRequest

E = TypeVar("E", TextEngine, SpeechEngine)


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

    def admit(self, tenant: str = "") -> _Slot:
        """Hold a slot for an `async with` block; ResourceExhausted when the queue or the tenant's share is full.

        A small class, not an asynccontextmanager: entering while a slot is free makes no generator.
        """
        return _Slot(self, tenant)

    async def _acquire(self, tenant: str) -> None:
        if self._running < self._slots and not self._waiters:
            self._running += 1
            return
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

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the waiter; `running` is unchanged
                return
        self._running -= 1


class _Slot:
    """`Admission.admit`'s context: a slot is acquired on entry and released on exit."""

    __slots__ = ("_admission", "_tenant")

    def __init__(self, admission: Admission, tenant: str) -> None:
        self._admission = admission
        self._tenant = tenant

    async def __aenter__(self) -> None:
        await self._admission._acquire(self._tenant)

    async def __aexit__(self, *exc_info: object) -> None:
        self._admission._release()


@dataclass(frozen=True, slots=True)
class Route(Generic[E]):
    """Where a request for one model goes: a TextEngine for a text model, a SpeechEngine for a voice."""

    model: ModelInfo
    engine: E
    admission: Admission


TextRoute = Route[TextEngine]
SpeechRoute = Route[SpeechEngine]


@dataclass(frozen=True, slots=True)
class TextJob:
    """A validated generation request bound to its text route."""

    route: TextRoute
    request: GenerationRequest

    def stream(self) -> AsyncGenerator[TextEvent, None]:
        return self.route.engine.stream(self.request)


@dataclass(frozen=True, slots=True)
class SpeechJob:
    """A validated synthesis request bound to its speech route, with what its client asked of the audio.

    `transcript` keeps what the synthesis has said (its text, and where each word is in the audio sent), so that a
    barge-in can be told what was heard.
    """

    route: SpeechRoute
    request: SynthesisRequest
    output: AudioOutput
    transcript: Transcript = field(default_factory=Transcript)

    def stream(self) -> AsyncGenerator[SpeechEvent, None]:
        request = dataclasses.replace(self.request, text=self.transcript.reading(self.request.text))
        return speak(self.route.engine.stream(request), self.output, self.transcript)


Job = TextJob | SpeechJob
"""A request paired with the engine that serves its kind; the pairing is typed where a job is made."""


class Router:
    """Maps model and voice names to their engine and admission queue; owns the engines' lifecycle.

    Invariant: a text model's route holds a TextEngine and a voice's a SpeechEngine (the engine's `serves` decides,
    and every model it lists must be of that kind), so a GenerationRequest can only reach a text engine and a
    SynthesisRequest a speech engine; names are unique across both.
    """

    def __init__(self, engines: Sequence[Engine], config: SchedulerConfig, *, max_tokens: int | None = None) -> None:
        self._engines = tuple(engines)
        self._config = config
        self._max_tokens = max_tokens  # the server's own bound on max_tokens, published with each text model
        self._text: dict[str, TextRoute] = {}
        self._speech: dict[str, SpeechRoute] = {}
        self._listed: list[ModelInfo] = []
        self._defaults: dict[ModelKind, str] = {}
        self._started = False

    def _build_routes(self) -> None:
        """Index the engines' models; run after start, when engines know what they loaded (context, template)."""
        text: dict[str, TextRoute] = {}
        speech: dict[str, SpeechRoute] = {}
        listed: list[ModelInfo] = []
        defaults: dict[ModelKind, str] = {}
        for engine in self._engines:
            admission = Admission(
                engine.slots, self._config.max_queue, self._config.retry_after_s, self._config.tenant_queue_share
            )
            for model in map(self._published, engine.models):
                if model.name in text or model.name in speech:
                    raise ValueError(f"model name {model.name!r} is served by two engines")
                if model.kind is not engine.serves:
                    raise ValueError(
                        f"engine {engine.name!r} serves {engine.serves.value} but lists {model.name!r} as "
                        f"{model.kind.value}"
                    )
                if engine.serves is ModelKind.TEXT_GENERATION:
                    text[model.name] = Route(model, engine, admission)
                else:
                    speech[model.name] = Route(model, engine, admission)
                listed.append(model)
                defaults.setdefault(model.kind, model.name)
        self._text, self._speech, self._listed, self._defaults = text, speech, listed, defaults

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
        return [(m, self._defaults.get(m.kind) == m.name) for m in self._listed]

    @overload
    def resolve(self, name: str, kind: Literal[ModelKind.TEXT_GENERATION]) -> TextRoute: ...
    @overload
    def resolve(self, name: str, kind: Literal[ModelKind.SPEECH_SYNTHESIS]) -> SpeechRoute: ...
    @overload
    def resolve(self, name: str, kind: ModelKind) -> TextRoute | SpeechRoute: ...

    def resolve(self, name: str, kind: ModelKind) -> TextRoute | SpeechRoute:
        """The route for `name` ("" selects the default of `kind`); NotFound when none matches.

        Unavailable while the engines warm up: the models are not known yet, and the client should retry.
        """
        self._check_started()
        text = kind is ModelKind.TEXT_GENERATION
        routes: Mapping[str, TextRoute | SpeechRoute] = self._text if text else self._speech
        noun = "model" if text else "voice"
        if not name:
            default = self._defaults.get(kind)
            if default is None:
                raise NotFound(f"this server serves no {noun}", reason="NO_DEFAULT_MODEL")
            name = default
        route = routes.get(name)
        if route is None:
            raise NotFound(
                f"unknown {noun} {clip(name)!r}; served: {', '.join(sorted(routes)) or 'none'}",
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
