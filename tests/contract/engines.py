"""The engines the contract runs on: one case per engine, with what the suite needs to drive it.

A new engine is added here as one case (and is done when the suite passes on it). Cases that need something this
machine may lack (the model, the voice, a GPU, the TensorRT-LLM double) carry a marker or a skip with the reason.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _pytest.mark import ParameterSet

from rillet.server.config import LlamaCppConfig, PiperConfig, Settings, SyntheticConfig
from rillet.server.engine import registry
from rillet.server.engine.base import SpeechEngine, TextEngine
from rillet.server.types import ModelKind, Prompt
from tests.doubles import EchoSpeechEngine

DOUBLES = Path(__file__).resolve().parents[1] / "doubles"
"""Where tests/doubles/tensorrt_llm/, the TensorRT-LLM test double, lives (importable as `tensorrt_llm`)."""

TRTLLM_DOUBLE_SECTION: dict[str, Any] = {"model": "rillet-double/tiny"}
"""The trtllm config section the double is driven with (Settings.trtllm)."""


@dataclass(frozen=True)
class TextCase:
    """A text engine and the prompts the contract drives it with."""

    id: str
    open: Callable[[], AbstractAsyncContextManager[TextEngine]]
    prompt: Prompt
    """Continued greedily for at least 24 tokens without an end of generation."""
    multibyte_prompt: Prompt
    """Makes the engine emit multibyte UTF-8 characters within `multibyte_tokens` tokens."""
    multibyte_tokens: int


@dataclass(frozen=True)
class SpeechCase:
    """A speech engine and the text the contract speaks with it."""

    id: str
    open: Callable[[], AbstractAsyncContextManager[SpeechEngine]]


@contextlib.asynccontextmanager
async def started(engine: Any) -> AsyncIterator[Any]:
    await engine.start()
    try:
        yield engine
    finally:
        await engine.aclose()


def _synthetic() -> AbstractAsyncContextManager[TextEngine]:
    # Unthrottled: one step per event-loop iteration, so a reader that keeps up gets one token per delta whatever
    # the machine's load (a paced engine on its own clock coalesces the steps a busy loop missed).
    config = SyntheticConfig(first_output_delay_s=0.0, tokens_per_second=0, slots=4, context_length=256)
    return started(registry.entry("synthetic").create(Settings(synthetic=config)))


def _llamacpp() -> AbstractAsyncContextManager[TextEngine]:
    config = LlamaCppConfig(slots=4, context_length=512, n_threads=1)
    return started(registry.entry("llamacpp").create(Settings(llamacpp=config)))


def _piper() -> AbstractAsyncContextManager[SpeechEngine]:
    return started(registry.entry("piper").create(Settings(piper=PiperConfig(slots=2))))


def _echo() -> AbstractAsyncContextManager[SpeechEngine]:
    return started(EchoSpeechEngine(slots=2))


def _real_trtllm_origin() -> str | None:
    """Where a real `tensorrt_llm` would be imported from (found before the double is put on the path)."""
    try:
        spec = importlib.util.find_spec("tensorrt_llm")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or Path(spec.origin).resolve().is_relative_to(DOUBLES):
        return None
    return spec.origin


REAL_TRTLLM = _real_trtllm_origin()


def _has_gpu() -> bool:
    try:
        import torch  # type: ignore[import-not-found]
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _trtllm(settings: Settings) -> AbstractAsyncContextManager[TextEngine]:
    return started(registry.entry("trtllm").create(settings))


def _trtllm_double(sampler: str, guided: str) -> Callable[[], AbstractAsyncContextManager[TextEngine]]:
    def open_engine() -> AbstractAsyncContextManager[TextEngine]:
        if str(DOUBLES) not in sys.path:
            sys.path.insert(0, str(DOUBLES))  # `import tensorrt_llm` now finds the double, in tests only
        section = TRTLLM_DOUBLE_SECTION | {"sampler": sampler, "guided_decoding_backend": guided}
        return _trtllm(Settings.model_validate({"trtllm": section}))

    return open_engine


def _trtllm_real() -> AbstractAsyncContextManager[TextEngine]:
    return _trtllm(Settings())  # the section from RILLET_TRTLLM__* (RILLET_TRTLLM__SAMPLER picks the sampler)


def _skip(case_id: str, reason: str, *marks: pytest.MarkDecorator) -> ParameterSet:
    return pytest.param(None, id=case_id, marks=[*marks, pytest.mark.skip(reason=reason)])


def _trtllm_double_param(case_id: str, sampler: str, guided: str) -> ParameterSet:
    """The double under one of TensorRT-LLM's samplers (each honours other fields: api.capabilities), with or without
    a guided decoding backend (constraints enforced, or all refused)."""
    if not (DOUBLES / "tensorrt_llm" / "__init__.py").is_file():
        return _skip(case_id, "the TensorRT-LLM test double (tests/doubles/tensorrt_llm/) does not exist yet")
    if "trtllm" not in registry.kinds(ModelKind.TEXT_GENERATION):
        return _skip(case_id, "engine/registry.py has no trtllm entry yet")
    if REAL_TRTLLM is not None:
        return _skip(case_id, f"the real tensorrt_llm is installed ({REAL_TRTLLM}); the double runs without it")
    case = TextCase(case_id, _trtllm_double(sampler, guided), "1, 2, 3, 4, 5, 6, 7, 8,", "🦩🦩🦩🦩🦩🦩🦩🦩", 8)
    return pytest.param(case, id=case.id)


def _trtllm_real_param() -> ParameterSet:
    gpu = pytest.mark.gpu
    if "trtllm" not in registry.kinds(ModelKind.TEXT_GENERATION):
        return _skip("trtllm", "engine/registry.py has no trtllm entry yet", gpu)
    if REAL_TRTLLM is None:
        return _skip("trtllm", "tensorrt_llm is not installed (pip install '.[trtllm]' on Linux x86_64 + CUDA)", gpu)
    if not _has_gpu():
        return _skip("trtllm", "no CUDA GPU is visible", gpu)
    if "RILLET_TRTLLM__MODEL" not in os.environ:
        return _skip("trtllm", "set RILLET_TRTLLM__MODEL to a small local model directory", gpu)
    case = TextCase("trtllm", _trtllm_real, "1, 2, 3, 4, 5, 6, 7, 8,", "🦩🦩🦩🦩🦩🦩🦩🦩", 8)
    return pytest.param(case, id=case.id, marks=gpu)


def text_cases() -> list[ParameterSet]:
    """Every text engine: the synthetic TEST engine, llamacpp on the real model, trtllm on its double and on a GPU."""
    synthetic = TextCase("synthetic", _synthetic, "the contract", "the contract", 40)
    llamacpp = TextCase("llamacpp", _llamacpp, "1, 2, 3, 4, 5, 6, 7, 8,", "🦩🦩🦩🦩🦩🦩🦩🦩", 8)
    return [
        pytest.param(synthetic, id=synthetic.id),
        pytest.param(llamacpp, id=llamacpp.id, marks=pytest.mark.model),
        _trtllm_double_param("trtllm-double", "auto", "llguidance"),
        _trtllm_double_param("trtllm-double-trtllm-sampler", "TRTLLMSampler", "none"),
        _trtllm_real_param(),
    ]


def speech_cases() -> list[ParameterSet]:
    """Every speech engine: piper on the real voice, and the echo TEST engine."""
    return [
        pytest.param(SpeechCase("piper", _piper), id="piper", marks=pytest.mark.voice),
        pytest.param(SpeechCase("echo", _echo), id="echo"),
    ]
