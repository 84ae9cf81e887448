"""llama.cpp's kernels alone on the distinct-long and long-prompt work: rillet.bench.cpu.bound (`--help`)."""

from rillet.bench.cpu.bound import main

if __name__ == "__main__":
    main()
