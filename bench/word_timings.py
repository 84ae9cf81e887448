"""Word timings' accuracy against a forced aligner, and their cost: rillet.bench.word_timings (`--help`)."""

from rillet.bench.word_timings import main

if __name__ == "__main__":
    main()
