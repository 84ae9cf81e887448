"""The llamacpp engine in-process, every step's shape and time: rillet.bench.cpu.steps (`--help`)."""

from rillet.bench.cpu.steps import main

if __name__ == "__main__":
    main()
