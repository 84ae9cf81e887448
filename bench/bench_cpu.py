"""CPU text benchmark: Rillet against llama-server and llama_cpp.server: rillet.bench.cpu (`--help` for its options)."""

from rillet.bench.cpu import main

if __name__ == "__main__":
    main()
