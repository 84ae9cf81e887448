"""TEST DOUBLE of TensorRT-LLM 1.2.1 (importable as `tensorrt_llm` in tests only; see FACTS.md and _double/)."""

from tensorrt_llm.llmapi import LLM, SamplingParams

__version__ = "1.2.1"

__all__ = ["LLM", "SamplingParams", "__version__"]
