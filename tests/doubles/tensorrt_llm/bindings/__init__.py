"""Mirror of `tensorrt_llm.bindings` (C++ bindings in the real package): only what the LLM API results use."""
