"""trtllm-serve's stand-in over the TensorRT-LLM test double: rillet.bench.trtllm_serve_double (`--help`)."""

from rillet.bench.trtllm_serve_double import main

if __name__ == "__main__":
    main()
