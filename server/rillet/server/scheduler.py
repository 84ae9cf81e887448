"""Admission control in front of each engine, and the routing of model names to engines of the right kind."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, NamedTuple, TypeVar, overload

from rillet.server.audio.output import speak
from rillet.server.audio.transcript import Transcript
from rillet.server.config import SchedulerConfig
from rillet.server.engine.base import Engine, SpeechEngine, SpeechEvent, TextEngine, TextEvent
from rillet.server.errors import ConfigurationError, NotFound, ResourceExhausted, Unavailable, clip
from rillet.server.reasons import Reason
from rillet.server.types import AudioOutput, GenerationRequest, ModelInfo, ModelKind, Priority, SynthesisRequest

E = TypeVar("E", TextEngine, SpeechEngine)

RESERVE_HEADROOM = 1.5
"""Batch requests leave free half again the recent interactive peak (and one): arrivals come in random bursts, and
one that finds no free slot waits for a batch request to end (measured on bench/fleet_routing.py's priority phase:
the peak plus one left the interactive TTFT p99 at 2.2x its own alone, this headroom within 1.5x)."""


class Admission:
    """Admission by class: at most `slots` requests run at once, at most `max_queue` wait, the rest are refused.

    Invariants:
    - `running` never exceeds `slots`; a released slot passes directly to a waiter that may take it, so a newcomer
      can never overtake the queue of its class. Within a class, waiters are admitted oldest first.
    - Batch requests hold at most `batch_cap` slots: `batch_slot_share` of the slots, less what recent interactive
      demand needs. Interactive demand (running plus waiting) is remembered as a peak that halves every
      `reserve_half_life_s`; batch may hold only the slots beyond RESERVE_HEADROOM times that peak plus one, never
      fewer than one. So under a saturating batch load interactive requests find a free slot at once, in their
      bursts too, instead of waiting for a batch request to end; batch requests over the cap are not preempted,
      their slots are just not refilled with batch work. A free slot therefore may have batch waiters (at the cap),
      never interactive ones.
    - Interactive waiters go before batch ones, but batch is never starved: while both classes wait and batch is
      below its cap, every `batch_every`-th slot handed over goes to the oldest batch waiter. So the batch request
      at the head of its queue is admitted within `batch_every` hand-overs once a batch slot is free, whatever the
      interactive load; and every batch slot released goes to a batch waiter when interactive ones do not wait.
    - Batch waiters never fill more than `batch_queue_share` of the queue, so a saturating batch load leaves room
      for interactive requests to wait in.
    - A tenant other than "" never has more than its share (`tenant_queue_share` of `max_queue`, at least 1) of
      requests waiting, both classes together, so one tenant cannot fill the queue.
    """

    def __init__(
        self,
        slots: int,
        max_queue: int,
        retry_after_s: float,
        tenant_queue_share: float = 1.0,
        *,
        batch_every: int = 4,
        batch_queue_share: float = 1.0,
        batch_slot_share: float = 1.0,
        reserve_half_life_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._slots = slots
        self._max_queue = max_queue
        self._retry_after_s = retry_after_s
        self._tenant_share = max(1, int(max_queue * tenant_queue_share))
        self._batch_every = batch_every
        self._batch_limit = max(1, int(max_queue * batch_queue_share)) if max_queue else 0
        self._batch_slots = max(1, int(slots * batch_slot_share))
        self._half_life = reserve_half_life_s  # 0: no memory of demand (the cap is the share alone)
        self._clock = clock
        self._peak = 0.0  # interactive demand's decaying peak, as of `_peak_at`
        self._peak_at = clock()
        self._running = 0
        self._batch_running = 0
        self._interactive: collections.deque[asyncio.Future[None]] = collections.deque()
        self._batch: collections.deque[asyncio.Future[None]] = collections.deque()
        self._passed_over = 0  # slots handed to interactive waiters in a row while a batch request waited
        self._waiting: collections.Counter[str] = collections.Counter()  # tasks waiting in `admit`, by tenant

    @property
    def running(self) -> int:
        return self._running

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def queued(self) -> int:
        """Requests waiting, both classes (cancelled waiters not yet skipped included)."""
        return len(self._interactive) + len(self._batch)

    @property
    def queued_batch(self) -> int:
        return len(self._batch)

    @property
    def running_batch(self) -> int:
        return self._batch_running

    @property
    def batch_cap(self) -> int:
        """The slots batch requests may hold now: their share, less the reserve for recent interactive demand."""
        if not self._half_life:
            return self._batch_slots
        reserve = math.ceil(RESERVE_HEADROOM * self._decayed_peak() - 1e-9) + 1
        return max(1, min(self._batch_slots, self._slots - reserve))

    def _decayed_peak(self) -> float:
        now = self._clock()
        self._peak *= 0.5 ** ((now - self._peak_at) / self._half_life)
        self._peak_at = now
        return self._peak

    def _note_interactive_demand(self) -> None:
        """Raise the remembered peak to the interactive requests running and waiting now (the caller's included)."""
        if self._half_life:
            demand = self._running - self._batch_running + len(self._interactive)
            self._peak = max(self._decayed_peak(), float(demand))

    def admit(self, tenant: str = "", priority: Priority = Priority.INTERACTIVE) -> _Slot:
        """Hold a slot for an `async with` block; ResourceExhausted when the queue or the tenant's share is full.

        A small class, not an asynccontextmanager: entering while a slot is free makes no generator.
        """
        return _Slot(self, tenant, priority)

    async def _acquire(self, tenant: str, priority: Priority) -> None:
        batch = priority is Priority.BATCH
        if self._running < self._slots and not self._interactive:
            if not batch:  # a free slot: batch waiters may be at their cap, never ahead of an interactive request
                self._running += 1
                self._note_interactive_demand()
                return
            if not self._batch and self._batch_running < self.batch_cap:
                self._running += 1
                self._batch_running += 1
                return
        queued = self.queued
        if queued >= self._max_queue:
            raise ResourceExhausted(
                f"all {self._slots} slots busy and {queued} requests queued; retry later",
                retry_after=self._retry_after_s,
                metadata={"slots": str(self._slots), "queued": str(queued)},
            )
        if batch and len(self._batch) >= self._batch_limit:
            raise ResourceExhausted(
                f"{len(self._batch)} batch requests queued, the batch share of the queue; retry later",
                retry_after=self._retry_after_s,
                metadata={"slots": str(self._slots), "queued": str(queued), "priority": "batch"},
            )
        if tenant and self._waiting[tenant] >= self._tenant_share:
            raise ResourceExhausted(
                f"tenant {tenant!r} already has {self._tenant_share} requests queued for this engine, its share",
                retry_after=self._retry_after_s,
                reason=Reason.TENANT_QUEUE_SHARE,
                metadata={"tenant": tenant, "share": str(self._tenant_share)},
            )
        waiters = self._batch if batch else self._interactive
        waiter = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        if not batch:
            self._note_interactive_demand()
        self._fill()  # a slot the batch cap kept may be batch's again now that the remembered peak has decayed
        self._waiting[tenant] += 1
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(batch)  # the slot was handed to us just as we were cancelled: pass it on
            elif waiter in waiters:
                # A cancelled waiter may already have been skipped (and popped) by `_release`.
                waiters.remove(waiter)
            raise
        finally:
            self._waiting[tenant] -= 1
            if not self._waiting[tenant]:
                del self._waiting[tenant]

    def _release(self, was_batch: bool) -> None:
        """A slot is free (a batch one when `was_batch`): hand it, and any other free slot, to waiters that may."""
        self._running -= 1
        if was_batch:
            self._batch_running -= 1
        self._fill()

    def _fill(self) -> None:
        """Hand free slots to waiters: interactive first, batch below its cap (one hand-over in `batch_every`)."""
        interactive, batch = self._interactive, self._batch
        cap = self.batch_cap  # one clock read: the loop changes what runs, not the remembered peak
        while self._running < self._slots:
            while interactive and interactive[0].done():
                interactive.popleft()  # cancelled while waiting
            while batch and batch[0].done():
                batch.popleft()
            batch_may = bool(batch) and self._batch_running < cap
            if batch_may and (not interactive or self._passed_over >= self._batch_every - 1):
                self._passed_over = 0
                self._batch_running += 1
                waiter = batch.popleft()
            elif interactive:
                self._passed_over = self._passed_over + 1 if batch_may else 0
                waiter = interactive.popleft()
            else:
                return
            self._running += 1
            waiter.set_result(None)


class _Slot:
    """`Admission.admit`'s context: a slot is acquired on entry and released on exit."""

    __slots__ = ("_admission", "_priority", "_tenant")

    def __init__(self, admission: Admission, tenant: str, priority: Priority) -> None:
        self._admission = admission
        self._tenant = tenant
        self._priority = priority

    async def __aenter__(self) -> None:
        await self._admission._acquire(self._tenant, self._priority)

    async def __aexit__(self, *exc_info: object) -> None:
        self._admission._release(self._priority is Priority.BATCH)


@dataclass(slots=True)
class Throughput:
    """What an engine's requests produced, counted as each ends (the load reports' rates: load.py).

    Monotonic counters written on the event loop by the session as each of its requests ends (output included when
    it was cancelled or failed after some): no per-output cost.
    """

    requests: int = 0
    tokens: int = 0
    characters: int = 0

    def ended(self, tokens: int, characters: int) -> None:
        self.requests += 1
        self.tokens += tokens
        self.characters += characters


@dataclass(frozen=True, slots=True)
class Route(Generic[E]):
    """Where a request for one model goes: a TextEngine for a text model, a SpeechEngine for a voice."""

    model: ModelInfo
    engine: E
    admission: Admission
    throughput: Throughput


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


class EngineQueue(NamedTuple):
    """One engine, the admission queue in front of it, and what its requests produced (shared by its models)."""

    engine: Engine
    admission: Admission
    throughput: Throughput


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
        self._queues: list[EngineQueue] = []
        self._started = False

    def _build_routes(self) -> None:
        """Index the engines' models; run after start, when engines know what they loaded (context, template)."""
        text: dict[str, TextRoute] = {}
        speech: dict[str, SpeechRoute] = {}
        listed: list[ModelInfo] = []
        defaults: dict[ModelKind, str] = {}
        queues: list[EngineQueue] = []
        for engine in self._engines:
            config = self._config
            admission = Admission(
                engine.slots,
                config.max_queue,
                config.retry_after_s,
                config.tenant_queue_share,
                batch_every=config.batch_every,
                batch_queue_share=config.batch_queue_share,
                batch_slot_share=config.batch_slot_share,
                reserve_half_life_s=config.interactive_reserve_half_life_s,
            )
            throughput = Throughput()
            queues.append(EngineQueue(engine, admission, throughput))
            for model in map(self._published, engine.models):
                if model.name in text or model.name in speech:
                    raise ConfigurationError(f"model name {model.name!r} is served by two engines: rename one")
                if model.kind is not engine.serves:
                    raise ValueError(
                        f"engine {engine.name!r} serves {engine.serves.value} but lists {model.name!r} as "
                        f"{model.kind.value}"
                    )
                if engine.serves is ModelKind.TEXT_GENERATION:
                    text[model.name] = Route(model, engine, admission, throughput)
                else:
                    speech[model.name] = Route(model, engine, admission, throughput)
                listed.append(model)
                defaults.setdefault(model.kind, model.name)
        self._text, self._speech, self._listed, self._defaults = text, speech, listed, defaults
        self._queues = queues

    def _published(self, model: ModelInfo) -> ModelInfo:
        """The model as clients see it: max_tokens_limit is what validation enforces (the engine's and ours)."""
        if model.kind is not ModelKind.TEXT_GENERATION or self._max_tokens is None:
            return model
        limit = min(self._max_tokens, model.max_tokens_limit or self._max_tokens)
        return dataclasses.replace(model, max_tokens_limit=limit)

    @property
    def engines(self) -> tuple[Engine, ...]:
        return self._engines

    def queues(self) -> list[EngineQueue]:
        """Each engine with its admission queue and throughput counters, in engine order; Unavailable while warming."""
        self._check_started()
        return self._queues

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
                raise NotFound(f"this server serves no {noun}", reason=Reason.NO_DEFAULT_MODEL)
            name = default
        route = routes.get(name)
        if route is None:
            raise NotFound(
                f"unknown {noun} {clip(name)!r}; served: {', '.join(sorted(routes)) or 'none'}",
                reason=Reason.MODEL_NOT_FOUND,
                metadata={"model": clip(name)},
            )
        return route

    @property
    def started(self) -> bool:
        """The engines are warm and the routes built."""
        return self._started

    def _check_started(self) -> None:
        if not self._started:
            raise Unavailable("the server is warming up its engines; retry shortly", reason=Reason.WARMING_UP)

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
