"""Where idle time to first token goes: rillet.bench.ttft_breakdown (`--help` for its options)."""

from rillet.bench.ttft_breakdown import main

if __name__ == "__main__":
    main()
