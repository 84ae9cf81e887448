"""Telemetry overhead: throughput and TTFT, tracing on against off: rillet.bench.tracing (`--help` for its options)."""

from rillet.bench.tracing import main

if __name__ == "__main__":
    main()
