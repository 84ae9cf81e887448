"""Puts the TensorRT-LLM test double (tests/doubles/tensorrt_llm) in place of `tensorrt_llm`, per test or process."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from rillet.server.config import TrtllmConfig
from rillet.server.engine.trtllm import TrtllmEngine
from rillet.server.types import EngineFinished, GenerationRequest, SamplingParams, TokenDelta

DOUBLES = Path(__file__).resolve().parent
"""The directory that, on sys.path, makes `import tensorrt_llm` load the double."""


def install() -> ModuleType:
    """Make `import tensorrt_llm` load the double from now on (for a launcher process; tests use `double()`)."""
    if str(DOUBLES) not in sys.path:
        sys.path.insert(0, str(DOUBLES))
    import tensorrt_llm

    if not Path(tensorrt_llm.__file__ or "").resolve().is_relative_to(DOUBLES):
        raise RuntimeError(f"the real tensorrt_llm ({tensorrt_llm.__file__}) shadows the test double")
    return tensorrt_llm


def _forget() -> None:
    for name in [n for n in sys.modules if n == "tensorrt_llm" or n.startswith("tensorrt_llm.")]:
        del sys.modules[name]


@contextmanager
def double() -> Iterator[Any]:
    """A fresh import of the double for the block; yields its `_double.SIMULATION` (the knobs), forgotten after."""
    added = str(DOUBLES) not in sys.path
    _forget()
    try:
        install()
        from tensorrt_llm._double import SIMULATION

        yield SIMULATION
    finally:
        _forget()
        if added and str(DOUBLES) in sys.path:
            sys.path.remove(str(DOUBLES))


def double_config(**overrides: Any) -> TrtllmConfig:
    """A TrtllmConfig for the double: a small batch and context, so tests see batching and limits quickly."""
    settings: dict[str, Any] = {"model": "rillet-double/tiny", "max_batch_size": 8, "max_seq_len": 512}
    return TrtllmConfig(**(settings | overrides))


GREEDY = SamplingParams(temperature=0.0)


@asynccontextmanager
async def running(config: TrtllmConfig | None = None) -> AsyncIterator[TrtllmEngine]:
    """A started trtllm engine over the double (inside `double()`), closed after the block."""
    engine = TrtllmEngine(config or double_config())
    await engine.start()
    try:
        yield engine
    finally:
        await engine.aclose()


def executor(engine: TrtllmEngine) -> Any:
    """The double's simulated worker behind the engine (to see what reached TensorRT-LLM)."""
    llm = engine._llm
    assert llm is not None
    assert llm._executor is not None
    return llm._executor.worker


def request(prompt: Any = "1, 2, 3, 4, 5, ", max_tokens: int = 8, **fields: Any) -> GenerationRequest:
    """A greedy request unless `sampling` says otherwise."""
    fields.setdefault("sampling", GREEDY)
    return GenerationRequest("r", "tiny", prompt, max_tokens, **fields)


async def run(engine: TrtllmEngine, req: GenerationRequest) -> tuple[list[TokenDelta], EngineFinished]:
    """The deltas and the finish of one stream, read to its end."""
    deltas: list[TokenDelta] = []
    async for event in engine.stream(req):
        if isinstance(event, EngineFinished):
            return deltas, event
        deltas.append(event)
    raise AssertionError("the stream ended without EngineFinished")
