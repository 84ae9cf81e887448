"""The trtllm engine: TensorRT-LLM 1.2's LLM API on NVIDIA GPUs (engine.py, kvstats.py), what it takes (api.py)."""

from rillet.server.engine.trtllm.api import CONTAINER, INSTALL_HELP, capabilities, llm_kwargs
from rillet.server.engine.trtllm.engine import ENGINE_NAME, TrtllmEngine, served_name
from rillet.server.engine.trtllm.stream import token_logprobs

__all__ = [
    "CONTAINER",
    "ENGINE_NAME",
    "INSTALL_HELP",
    "TrtllmEngine",
    "capabilities",
    "llm_kwargs",
    "served_name",
    "token_logprobs",
]
