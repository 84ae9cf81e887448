"""Soak: `rillet serve` under hundreds of verified clients: rillet.bench.soak.run (`--help` for its options)."""

from rillet.bench.soak.run import main

if __name__ == "__main__":
    main()
