"""Constrained-generation benchmark, Rillet against llama-server: rillet.bench.constraints.run (`--help`)."""

from rillet.bench.constraints.run import main

if __name__ == "__main__":
    main()
