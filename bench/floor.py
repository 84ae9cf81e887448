"""The raw grpc.aio floor Rillet's overhead is judged by: rillet.bench.floor (`--help` for its options)."""

from rillet.bench.floor import main

if __name__ == "__main__":
    main()
