"""The llamacpp engine on the real Gemma 3 270M: streaming, sampling, batching, cancellation, stops, UTF-8, limits.

Small token counts throughout. No test compares tokens of a batched run with a solo run: batch layout changes the
numerics slightly, so only runs with the same layout (a request alone, twice) may be compared token for token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio

from rillet.server.config import LlamaCppConfig
from rillet.server.engine import llamacpp_native
from rillet.server.engine.llamacpp import LlamaCppEngine, resolve_model_path
from rillet.server.errors import EngineDead, InvalidArgument, Unavailable
from rillet.server.types import (
    ChatMessage,
    EngineEvent,
    EngineFinished,
    FinishReason,
    GenerationRequest,
    ModelKind,
    Prompt,
    SamplingParams,
    SynthesisRequest,
    TokenDelta,
)
from tests.conftest import eventually

pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="module")]

CONFIG = LlamaCppConfig(slots=8, context_length=1024, n_threads=1)
GREEDY = SamplingParams(temperature=0.0)
PROMPT = "The capital of France is"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(CONFIG)
    await engine.start()
    yield engine
    await engine.aclose()


@pytest.fixture(scope="module")
def vocab() -> Iterator[llamacpp_native.LlamaModel]:
    """The model's vocabulary alone, to detokenize ids in one go."""
    llamacpp_native.init_backend()
    model = llamacpp_native.LlamaModel(str(resolve_model_path(CONFIG)), vocab_only=True)
    yield model
    model.free()


def detokenize(vocab: llamacpp_native.LlamaModel, ids: list[int]) -> str:
    return b"".join(vocab.piece(t) for t in ids).decode("utf-8", "replace")


@dataclass
class Run:
    deltas: list[TokenDelta] = field(default_factory=list)
    finished: EngineFinished | None = None
    first_output_at: float | None = None
    finished_at: float | None = None

    @property
    def text(self) -> str:
        return "".join(d.text for d in self.deltas)

    @property
    def ids(self) -> list[int]:
        return [t for d in self.deltas for t in d.token_ids]


def request(
    prompt: Prompt = PROMPT,
    max_tokens: int = 12,
    sampling: SamplingParams = GREEDY,
    *,
    request_id: str = "r",
    stop: tuple[str, ...] = (),
    top_logprobs: int | None = None,
) -> GenerationRequest:
    return GenerationRequest(request_id, "gemma-3-270m", prompt, max_tokens, sampling, stop, top_logprobs)


async def collect(stream: AsyncIterator[EngineEvent]) -> Run:
    run = Run()
    async for event in stream:
        assert run.finished is None, "nothing may follow EngineFinished"
        if isinstance(event, TokenDelta):
            run.deltas.append(event)
            if run.first_output_at is None:
                run.first_output_at = time.perf_counter()
        else:
            assert isinstance(event, EngineFinished)
            run.finished = event
            run.finished_at = time.perf_counter()
    assert run.finished is not None
    assert len(run.ids) == run.finished.usage.output_tokens
    return run


async def test_model_info_reflects_the_loaded_model(engine: LlamaCppEngine) -> None:
    (info,) = engine.models
    assert (info.name, info.kind, info.engine) == ("gemma-3-270m", ModelKind.TEXT_GENERATION, "llamacpp")
    assert info.context_length == 1024
    assert info.max_tokens_limit == 1023
    assert not info.supports_chat  # the base model carries no chat template
    assert not info.is_test_engine
    assert engine.slots == 8
    assert engine.healthy()


async def test_deltas_concatenate_to_the_detokenized_completion(
    engine: LlamaCppEngine, vocab: llamacpp_native.LlamaModel
) -> None:
    run = await collect(engine.stream(request(max_tokens=12)))
    assert run.finished is not None
    assert run.finished.reason is FinishReason.LENGTH
    assert run.finished.usage.output_tokens == 12
    assert run.finished.usage.input_tokens == len(vocab.tokenize(PROMPT, add_special=True, parse_special=False))
    assert run.finished.prefill_seconds is not None
    assert run.finished.prefill_seconds > 0
    assert run.text == detokenize(vocab, run.ids)
    assert run.text.strip()  # a real completion, not an empty stream
    assert engine.active == 0


async def test_greedy_alone_is_repeatable(engine: LlamaCppEngine) -> None:
    first = await collect(engine.stream(request(max_tokens=8)))
    second = await collect(engine.stream(request(max_tokens=8)))
    assert first.ids == second.ids


async def test_seeded_sampling_is_reproducible_alone(engine: LlamaCppEngine) -> None:
    sampling = SamplingParams(temperature=1.0, top_p=0.95, top_k=50, min_p=0.01, repetition_penalty=1.1, seed=1234)
    runs = [await collect(engine.stream(request("Once upon a time", 16, sampling))) for _ in range(2)]
    assert runs[0].ids == runs[1].ids
    assert runs[0].text == runs[1].text
    assert len(runs[0].ids) > 0


async def test_eight_run_together_while_two_more_wait_for_a_slot(engine: LlamaCppEngine) -> None:
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, engine.active)
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    prompts = [f"Story number {i}: once upon a time" for i in range(10)]
    runs = await asyncio.gather(
        *(collect(engine.stream(request(p, 6, request_id=f"r{i}"))) for i, p in enumerate(prompts))
    )
    watcher.cancel()
    assert peak == 8
    for run in runs:
        assert run.finished is not None
        assert run.finished.reason in (FinishReason.LENGTH, FinishReason.STOP)
        assert run.text or run.finished.reason is FinishReason.STOP
    first_free = min(run.finished_at or 0.0 for run in runs[:8])
    for late in runs[8:]:  # the two beyond the slots started only once a slot was freed
        assert late.first_output_at is not None
        assert late.first_output_at >= first_free
    assert engine.active == 0


async def test_closing_a_stream_frees_its_slot_and_the_others_finish(engine: LlamaCppEngine) -> None:
    others = [asyncio.create_task(collect(engine.stream(request(max_tokens=12, request_id=f"o{i}")))) for i in range(2)]
    stream = engine.stream(request("A long story begins", max_tokens=200, request_id="cancelled"))
    first = await anext(stream)
    assert isinstance(first, TokenDelta)
    await eventually(lambda: engine.active == 3)
    await stream.aclose()
    await eventually(lambda: engine.active <= 2, timeout=2.0)
    runs = await asyncio.gather(*others)
    for run in runs:
        assert run.finished is not None
        assert run.finished.reason is FinishReason.LENGTH
        assert run.finished.usage.output_tokens == 12
    await eventually(lambda: engine.active == 0)


async def test_cancelling_the_consuming_task_frees_the_slot(engine: LlamaCppEngine) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.stream(request(max_tokens=200, request_id="task")):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    assert engine.active == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: engine.active == 0, timeout=2.0)
    run = await collect(engine.stream(request(max_tokens=4)))  # the freed slot serves the next request
    assert run.finished is not None
    assert run.finished.usage.output_tokens == 4


async def test_stop_string_across_token_boundaries_is_not_emitted(
    engine: LlamaCppEngine, vocab: llamacpp_native.LlamaModel
) -> None:
    reference = await collect(engine.stream(request(max_tokens=12)))
    pieces = [vocab.piece(t).decode() for t in reference.ids]
    boundary = next(i for i in range(2, len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2)
    stop = pieces[boundary][-2:] + pieces[boundary + 1][:2]  # spans two tokens
    expected = reference.text[: reference.text.index(stop)]
    run = await collect(engine.stream(request(max_tokens=12, stop=(stop, "never-appears-xyz"))))
    assert run.finished is not None
    assert run.finished.reason is FinishReason.STOP_SEQUENCE
    assert run.finished.stop_sequence == stop
    assert run.text == expected
    assert stop not in run.text


async def test_multibyte_characters_split_across_tokens_are_never_split_across_deltas(
    engine: LlamaCppEngine, vocab: llamacpp_native.LlamaModel
) -> None:
    run = await collect(engine.stream(request("🦩🦩🦩🦩🦩🦩🦩🦩", max_tokens=8)))
    assert run.finished is not None
    split_tokens = [t for t in run.ids if not _is_utf8(vocab.piece(t))]
    assert split_tokens, "the prompt should make the model emit byte-level tokens"
    for delta in run.deltas[:-1]:
        assert "\ufffd" not in delta.text
    assert run.text == detokenize(vocab, run.ids)
    assert any(ord(ch) > 0xFFFF for ch in run.text)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


async def test_top_logprobs_follow_the_greedy_choice(engine: LlamaCppEngine) -> None:
    run = await collect(engine.stream(request(max_tokens=4, top_logprobs=3)))
    logprobs = [lp for d in run.deltas for lp in d.logprobs]
    assert [lp.token.token_id for lp in logprobs] == run.ids
    for lp in logprobs:
        assert len(lp.top) == 3
        assert lp.top[0].token_id == lp.token.token_id
        assert lp.top[0].logprob >= lp.top[1].logprob >= lp.top[2].logprob
        assert lp.token.logprob <= 0


async def test_over_long_prompt_fails_before_any_output(engine: LlamaCppEngine) -> None:
    stream = engine.stream(request((2, *([818] * 1020)), max_tokens=8))
    with pytest.raises(InvalidArgument) as info:
        await anext(stream)
    error = info.value
    assert error.reason == "PROMPT_TOO_LONG"
    assert error.message == ("prompt of 1021 tokens plus max_tokens 8 exceeds the context of 1024 tokens per sequence")
    assert error.metadata["context_length"] == "1024"
    with pytest.raises(InvalidArgument) as info:
        await anext(engine.stream(request("word " * 1100, max_tokens=1)))
    assert info.value.reason == "PROMPT_TOO_LONG"
    assert engine.active == 0


async def test_other_invalid_prompts_fail_before_any_output(engine: LlamaCppEngine) -> None:
    with pytest.raises(InvalidArgument) as info:
        await anext(engine.stream(request((2, 10_000_000))))
    assert info.value.reason == "TOKEN_ID_OUT_OF_RANGE"
    with pytest.raises(InvalidArgument) as info:
        await anext(engine.stream(request((ChatMessage("user", "hi"),))))
    assert info.value.reason == "CHAT_TEMPLATE_MISSING"
    with pytest.raises(InvalidArgument):
        engine.stream(SynthesisRequest("s", "voice", _no_text(), 22050, 2205))
    run = await collect(engine.stream(request((2, 818, 5279), max_tokens=3)))  # token ids are fine
    assert run.finished is not None
    assert run.finished.usage.input_tokens == 3


async def _no_text() -> AsyncIterator[str]:
    return
    yield ""


async def test_a_crashed_engine_thread_is_dead_for_current_and_future_streams(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = LlamaCppEngine(LlamaCppConfig(slots=2, context_length=256))
    await engine.start()
    try:

        def broken_decode(self: llamacpp_native.LlamaContext) -> int:
            raise RuntimeError("simulated native failure")

        monkeypatch.setattr(llamacpp_native.LlamaContext, "decode", broken_decode)
        with pytest.raises(EngineDead):
            await collect(engine.stream(request(max_tokens=4)))
        assert not engine.healthy()
        assert engine.active == 0
        with pytest.raises(EngineDead):
            await anext(engine.stream(request(max_tokens=4)))
    finally:
        await engine.aclose()


async def test_aclose_ends_streams_in_flight_and_refuses_new_ones() -> None:
    engine = LlamaCppEngine(LlamaCppConfig(slots=2, context_length=256))
    with pytest.raises(Unavailable):
        await anext(engine.stream(request(max_tokens=4)))  # not started yet
    await engine.start()
    stream = engine.stream(request(max_tokens=200))
    assert isinstance(await anext(stream), TokenDelta)
    await engine.aclose()
    with pytest.raises(Unavailable):
        async for _ in stream:
            pass
    with pytest.raises(Unavailable):
        await anext(engine.stream(request(max_tokens=4)))
    assert engine.active == 0
    assert not engine.healthy()
