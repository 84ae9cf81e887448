"""GPU benchmark: Rillet's trtllm engine against trtllm-serve: rillet.bench.gpu (`--help` for its options)."""

from rillet.bench.gpu import main

if __name__ == "__main__":
    raise SystemExit(main())
