"""Tokens/s of `rillet serve --workers N`: rillet.bench.workers (`--help` for its options)."""

from rillet.bench.workers import main

if __name__ == "__main__":
    main()
