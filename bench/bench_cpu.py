"""CPU text benchmark, Rillet against llama-server and llama_cpp.server: rillet.bench.cpu.run (`--help`)."""

from rillet.bench.cpu.run import main

if __name__ == "__main__":
    main()
