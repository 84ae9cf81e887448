"""Frontend benchmark over the TensorRT-LLM test double: rillet.bench.frontend (`--help` for its options)."""

from rillet.bench.frontend import main

if __name__ == "__main__":
    main()
