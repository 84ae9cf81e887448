"""`rillet serve` with the TensorRT-LLM TEST DOUBLE as `tensorrt_llm`: for frontend benchmarks only, never a GPU.

Usage: python bench/serve_trtllm_double.py --step-seconds 0.0128 --stats-out stats.json -- serve --text-engine trtllm
The double's simulated executor steps every `--step-seconds` (one token to every running sequence per step); at
exit the launcher writes the executor's own counters (steps, tokens produced, the step loop's CPU seconds) so a
benchmark can tell the frontend's CPU from the simulation's.
"""

from __future__ import annotations

import argparse
import atexit
import json
import sys
from pathlib import Path

from rillet.bench.results import ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-seconds", type=float, required=True, help="one executor iteration of the double")
    parser.add_argument("--stats-out", type=Path, required=True, help="JSON file the double's counters go to at exit")
    parser.add_argument("rillet_args", nargs=argparse.REMAINDER, help="-- then the rillet command line")
    opts = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.doubles.trtllm import install

    tensorrt_llm = install()
    simulation = tensorrt_llm._double.SIMULATION
    simulation.step_seconds = opts.step_seconds
    from tensorrt_llm._double.executor import SimulatedExecutor

    def write_stats() -> None:
        executors = list(SimulatedExecutor.instances)
        stats = {
            "steps": sum(e.steps for e in executors),
            "tokens_produced": sum(e.tokens_produced for e in executors),
            "executor_cpu_seconds": sum(e.cpu_seconds for e in executors),
            "largest_batch": max((e.largest_batch for e in executors), default=0),
        }
        opts.stats_out.write_text(json.dumps(stats))

    atexit.register(write_stats)
    args = [a for a in opts.rillet_args if a != "--"]
    sys.argv = ["rillet", *args]
    from rillet.server.cli import main as rillet_main

    rillet_main()


if __name__ == "__main__":
    main()
