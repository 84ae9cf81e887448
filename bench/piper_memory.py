"""piper's RSS and throughput, arena kept and released: rillet.bench.piper_memory (`--help` for its options)."""

from rillet.bench.piper_memory import main

if __name__ == "__main__":
    main()
