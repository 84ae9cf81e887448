"""Rewrites README.md's performance block from bench/results/: rillet.bench.perf_readme (`--help` for its options)."""

from rillet.bench.perf_readme import main

if __name__ == "__main__":
    main()
