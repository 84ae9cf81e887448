"""ghz (a Go load generator) against Generate, beside `rillet bench`: rillet.bench.ghz (`--help` for its options)."""

from rillet.bench.ghz import main

if __name__ == "__main__":
    main()
