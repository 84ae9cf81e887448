"""Mirror of `tensorrt_llm.executor`'s exports that the LLM API uses."""

from tensorrt_llm.executor.result import CompletionOutput, DetokenizedGenerationResultBase, GenerationResult
from tensorrt_llm.executor.utils import RequestError

__all__ = ["CompletionOutput", "DetokenizedGenerationResultBase", "GenerationResult", "RequestError"]
