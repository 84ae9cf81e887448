"""The llamacpp engine in-process on distinct long prompts, every engine step's shape and time: where a run's CPU goes.

Closed-loop streams (`--streams`) send `--requests` distinct prompts of `--prompt-tokens` tokens (bench_cpu's
distinct-long prompts) straight to `LlamaCppEngine`, with no server and no client, and every step the worker times
is recorded through the seam that already hears them all (`PrefillPacer.observe`: decodes, prompt tokens,
seconds), and each of its `llama_decode` calls apart (a step of decodes beside prompt tokens makes two past 64
rows). It prints tokens/s, TTFT, the steps by kind (decode-only, prefill-only, both) and the calls by kind (decodes,
prompt tokens, both in one), to set beside `bench/cpu_bound.py`'s kernels-alone figures. `--set key=value`
overrides an `RILLET_LLAMACPP__` setting.

Run: .venv/bin/python bench/engine_steps.py [--threads 1] [--set prefill_budget=256 ...]
Writes bench/results/engine_steps_<time>.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from rillet.bench.cpu.run import resolve_gguf
from rillet.bench.cpu.workloads import distinct_prompts, in_process_parser, token_counter
from rillet.bench.results import write_results
from rillet.bench.stats import median, percentile

KINDS = ("prefill-only", "both", "decode-only")
CALL_KINDS = ("prompt", "fused", "decode")


def tally(rows: list[tuple[int, int, float]], kinds: tuple[str, str, str]) -> dict[str, dict[str, float]]:
    """(decode rows, prompt tokens, seconds) by kind: prompt tokens alone, both, decode rows alone, in `kinds` order."""
    table: dict[str, dict[str, float]] = {}
    for decodes, prefill, seconds in rows:
        kind = kinds[2] if not prefill else kinds[0] if not decodes else kinds[1]
        row = table.setdefault(kind, {"steps": 0, "seconds": 0.0, "decode_rows": 0, "prompt_tokens": 0})
        row["steps"] += 1
        row["seconds"] += seconds
        row["decode_rows"] += decodes
        row["prompt_tokens"] += prefill
    return {kind: table[kind] for kind in kinds if kind in table}


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    from rillet.server.config import LlamaCppConfig
    from rillet.server.engine.llamacpp import pacing, worker
    from rillet.server.engine.llamacpp.engine import LlamaCppEngine
    from rillet.server.types import GenerationRequest, SamplingParams, TokenDelta

    gguf = resolve_gguf(opts.model)
    with token_counter(gguf) as count:
        prompts = list(distinct_prompts(count, opts.prompt_tokens, opts.requests))
    settings = dict(item.split("=", 1) for item in opts.set)
    config = LlamaCppConfig.model_validate(
        {"model_path": gguf, "context_length": opts.context, "n_threads": opts.threads, **settings}
    )
    steps: list[tuple[int, int, float]] = []
    calls: list[tuple[int, int, float]] = []
    observe = pacing.PrefillPacer.observe
    decode_call = worker.Worker._decode

    def recording(pacer: pacing.PrefillPacer, decodes: int, prefill: int, seconds: float) -> None:
        steps.append((decodes, prefill, seconds))
        observe(pacer, decodes, prefill, seconds)

    def timed_call(self: worker.Worker, work: Any) -> int:
        decodes = sum(1 for seq, _ in work if not seq.prefilling)  # before the call: it may complete a prompt
        prefill = sum(count for seq, count in work if seq.prefilling)
        started = time.perf_counter()
        advanced = decode_call(self, work)
        calls.append((decodes, prefill, time.perf_counter() - started))
        return advanced

    engine = LlamaCppEngine(config)
    await engine.start()
    ttfts: list[float] = []

    async def client(queue: list[str]) -> None:
        while queue:
            prompt = queue.pop(0)
            started = time.perf_counter()
            first: float | None = None
            request = GenerationRequest(
                "steps", engine.models[0].name, prompt, opts.max_tokens, SamplingParams(temperature=0.0)
            )
            async for event in engine.stream(request):
                if first is None and isinstance(event, TokenDelta) and event.token_ids:
                    first = time.perf_counter() - started
            assert first is not None, "no token came"
            ttfts.append(first)

    pacing.PrefillPacer.observe = recording  # type: ignore[method-assign,assignment]
    worker.Worker._decode = timed_call  # type: ignore[method-assign]
    try:
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client(prompts) for _ in range(opts.streams)))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        pacing.PrefillPacer.observe = observe  # type: ignore[method-assign]
        worker.Worker._decode = decode_call  # type: ignore[method-assign]
        await engine.aclose()
    return {
        "args": vars(opts),
        "tokens_per_s": round(opts.requests * opts.max_tokens / wall, 2),
        "wall_s": round(wall, 2),
        "process_cpu_s": round(cpu, 2),
        "ttft_p50_s": round(median(ttfts), 3),
        "ttft_p99_s": round(percentile(ttfts, 99), 3),
        "steps": tally(steps, KINDS),
        "calls": tally(calls, CALL_KINDS),
        "load": os.getloadavg()[0],
    }


def report(results: dict[str, Any]) -> str:
    args = results["args"]
    total = sum(row["seconds"] for row in results["steps"].values()) or 1.0
    lines = [
        "# The llamacpp engine's steps (bench/engine_steps.py)",
        "",
        f"{args['requests']} distinct prompts of {args['prompt_tokens']} tokens, {args['max_tokens']} output tokens "
        f"each, {args['streams']} streams, {args['threads']} thread(s), {args['context']} cells, settings "
        f"{args['set'] or 'default'}; in-process, no server. Load average after: {results['load']:.2f}.",
        "",
        f"tokens/s {results['tokens_per_s']}, wall {results['wall_s']} s, process CPU {results['process_cpu_s']} s, "
        f"TTFT p50 {results['ttft_p50_s']} s, p99 {results['ttft_p99_s']} s.",
        "",
        "| steps | count | seconds | share | ms a step | decode rows | prompt tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, row in results["steps"].items():
        lines.append(
            f"| {kind} | {row['steps']} | {row['seconds']:.2f} | {row['seconds'] / total:.0%} | "
            f"{row['seconds'] / row['steps'] * 1e3:.1f} | {row['decode_rows']} | {row['prompt_tokens']} |"
        )
    if calls := results.get("calls"):
        lines += [
            "",
            "Each `llama_decode` call apart (its sampling and sending included):",
            "",
            "| calls | count | seconds | ms a call | decode rows | prompt tokens | ms a decode row | ms a prompt "
            "token |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for kind, row in calls.items():
            rows, tokens, ms = row["decode_rows"], row["prompt_tokens"], row["seconds"] * 1e3
            per_row = f"{ms / rows:.1f}" if rows and not tokens else "-"
            per_token = f"{ms / tokens:.2f}" if tokens and not rows else "-"
            lines.append(
                f"| {kind} | {row['steps']} | {row['seconds']:.2f} | {ms / row['steps']:.1f} | {rows} | {tokens} | "
                f"{per_row} | {per_token} |"
            )
    return "\n".join(lines) + "\n"


def parse() -> argparse.Namespace:
    parser = in_process_parser(__doc__)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="llamacpp settings to override")
    return parser.parse_args()


def main() -> None:
    opts = parse()
    results = asyncio.run(run(opts))
    write_results("engine_steps", results, report(results), *([opts.tag] if opts.tag else []))
