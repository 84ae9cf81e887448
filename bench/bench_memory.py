"""Server memory: RSS idle, per session, per active request: rillet.bench.memory (`--help` for its options)."""

from rillet.bench.memory import main

if __name__ == "__main__":
    main()
