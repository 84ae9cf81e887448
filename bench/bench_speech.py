"""Speech benchmark: TTFA and real-time factor: rillet.bench.speech (`--help` for its options)."""

from rillet.bench.speech import main

if __name__ == "__main__":
    main()
