"""Rillet against the raw grpc.aio floor, alternating rounds: rillet.bench.floor_compare (`--help` for its options)."""

from rillet.bench.floor_compare import main

if __name__ == "__main__":
    main()
