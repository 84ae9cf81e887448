"""`rillet serve` with the TensorRT-LLM test double: rillet.bench.trtllm_double (`--help` for its options)."""

from rillet.bench.trtllm_double import main

if __name__ == "__main__":
    main()
