"""Telemetry CPU per request: rillet.bench.telemetry_cpu (`--help` for its options)."""

from rillet.bench.telemetry_cpu import main

if __name__ == "__main__":
    main()
