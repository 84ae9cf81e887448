"""The constrained-generation benchmark's command (bench/bench_constraints.py): options, the runs, the report."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import time
from pathlib import Path
from typing import Any

from rillet.bench.constraints import __doc__ as ABOUT
from rillet.bench.constraints.clients import generator_for
from rillet.bench.constraints.corpus import Entry, load
from rillet.bench.constraints.measure import constrained_cost, first_and_repeated, mask_cost, validity
from rillet.bench.cpu.run import resolve_gguf
from rillet.bench.cpu.systems import Server, start_server
from rillet.bench.results import BUILD, RESULTS, write_results

SYSTEMS = ("rillet", "llama-server")


def slices(entries: list[Entry], opts: argparse.Namespace) -> dict[int, list[Entry]]:
    """Each level's own schemas for the first/repeated passes (a schema seen at one level is not new at the next)."""
    out: dict[int, list[Entry]] = {}
    start = 0
    for level in opts.levels:
        count = max(opts.latency_schemas, level)
        out[level] = [entries[(start + i) % len(entries)] for i in range(count)]
        start += count
    return out


async def measure(system: str, server: Server, opts: argparse.Namespace, entries: list[Entry]) -> dict[str, Any]:
    """Everything measured on one started server: first/repeated passes per level, validity, constrained cost."""
    result: dict[str, Any] = {"system": system}
    async with generator_for(server, opts.request_timeout) as generate:
        warm = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
        await generate("Warm-up:", None, 4)
        await generate('{"ok": true}\n', warm, 8)
        levels: list[dict[str, Any]] = []
        for level, chosen in slices(entries, opts).items():
            first, repeated = await first_and_repeated(generate, chosen, opts.latency_max_tokens, level)
            levels += [dataclasses.asdict(first) | {"tokens_per_s": first.tokens_per_s}]
            levels += [dataclasses.asdict(repeated) | {"tokens_per_s": repeated.tokens_per_s}]
            print(
                f"  {system:<13} c={level:<2} first TTFT p50 {first.ttft_p50_s * 1e3:7.1f} ms, repeated "
                f"{repeated.ttft_p50_s * 1e3:7.1f} ms; {first.tokens_per_s:6.1f} / {repeated.tokens_per_s:6.1f} tok/s"
            )
        result["levels"] = levels
        checked, outputs = await validity(system, generate, entries, opts.max_tokens, opts.slots)
        result["validity"] = dataclasses.asdict(checked) | {"valid_share": checked.valid_share}
        print(
            f"  {system:<13} validity: {checked.valid}/{checked.finished} finished outputs valid, "
            f"{checked.length} cut by max_tokens, {len(checked.refused)} refused ({checked.wall_s:.0f} s)"
        )
        if system == "rillet":
            constrained, free = await constrained_cost(generate, entries, outputs, opts.slots)
            result["cost"] = [dataclasses.asdict(p) | {"tokens_per_s": p.tokens_per_s} for p in (constrained, free)]
            print(
                f"  {system:<13} {opts.slots} streams: constrained {constrained.tokens_per_s:.1f} tok/s, "
                f"unconstrained {free.tokens_per_s:.1f} tok/s"
            )
            result["outputs"] = [
                {"name": e.name, "token_ids": o.token_ids} for e, o in zip(entries, outputs, strict=True)
            ]
    return result


def render(meta: dict[str, Any], results: list[dict[str, Any]], mask: dict[str, Any] | None) -> str:
    by = {r["system"]: r for r in results}
    lines = [
        "# Constrained generation: Rillet (llguidance) and llama-server (GBNF from json_schema)",
        "",
        f"{meta['date']}, {meta['machine']}; {meta['model']}, {meta['threads']} threads, {meta['slots']} slots, "
        f"context {meta['context']}; greedy; corpus of {meta['schemas']} schemas, max_tokens {meta['max_tokens']} "
        f"(validity) and {meta['latency_max_tokens']} (TTFT passes).",
        "",
        "## Validity (every schema once; finished outputs checked with jsonschema, formats included)",
        "",
        "| system | schemas | finished | valid of finished | cut by max_tokens | refused |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        v = r["validity"]
        lines.append(
            f"| {r['system']} | {v['schemas']} | {v['finished']} | {v['valid']} ({v['valid_share']:.1%}) | "
            f"{v['length']} | {len(v['refused'])} |"
        )
    for r in results:
        v = r["validity"]
        for name, text in v["invalid"].items():
            lines.append(f"- {r['system']} invalid `{name}`: `{text[:120]}`")
        for name, why in v["refused"].items():
            lines.append(f"- {r['system']} refused `{name}`: {why}")
    if "rillet" in by and "cost" in by["rillet"]:
        constrained, free = by["rillet"]["cost"]
        ratio = constrained["tokens_per_s"] / free["tokens_per_s"] if free["tokens_per_s"] else float("nan")
        lines += [
            "",
            f"## What the constraint costs Rillet at {constrained['streams']} streams (same prompts and lengths)",
            "",
            "| pass | requests | tokens | tok/s | TTFT p50 ms |",
            "|---|---|---|---|---|",
            *(
                f"| {p['label']} | {p['requests']} | {p['tokens']} | {p['tokens_per_s']:.1f} | "
                f"{p['ttft_p50_s'] * 1e3:.0f} |"
                for p in (constrained, free)
            ),
            "",
            f"Constrained / unconstrained tokens/s: **{ratio:.2f}** (target >= 0.9).",
        ]
    lines += [
        "",
        "## Side by side (first: schemas new to the server, TTFT includes compiling them; repeated: the same again)",
        "",
        "| system | streams | pass | TTFT p50 ms | TTFT p99 ms | tok/s | finishes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for p in r["levels"]:
            lines.append(
                f"| {r['system']} | {p['streams']} | {p['label']} | {p['ttft_p50_s'] * 1e3:.0f} | "
                f"{p['ttft_p99_s'] * 1e3:.0f} | {p['tokens_per_s']:.1f} | {p['finishes']} |"
            )
    if "rillet" in by and "llama-server" in by:
        lines += ["", "| streams | pass | Rillet / llama-server TTFT p50 (target <= 1.0) | tok/s (target >= 1.0) |"]
        lines.append("|---|---|---|---|")
        for mine, theirs in zip(by["rillet"]["levels"], by["llama-server"]["levels"], strict=True):
            ttft = mine["ttft_p50_s"] / theirs["ttft_p50_s"] if theirs["ttft_p50_s"] else float("nan")
            rate = mine["tokens_per_s"] / theirs["tokens_per_s"] if theirs["tokens_per_s"] else float("nan")
            lines.append(f"| {mine['streams']} | {mine['label']} | {ttft:.2f} | {rate:.2f} |")
    if mask is not None:
        lines += [
            "",
            f"## Per-token mask cost (Rillet's outputs replayed in process: {mask['tokens']} tokens, "
            f"{mask['vocabulary']}-token vocabulary)",
            "",
            "| part | p50 µs | p99 µs |",
            "|---|---|---|",
            f"| llguidance's mask | {mask['mask_us']['p50']:.1f} | {mask['mask_us']['p99']:.1f} |",
            f"| applying it to the logits row | {mask['apply_us']['p50']:.1f} | {mask['apply_us']['p99']:.1f} |",
            f"| together (mean {mask['total_us']['mean']:.1f}) | {mask['total_us']['p50']:.1f} | "
            f"{mask['total_us']['p99']:.1f} |",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=ABOUT, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--model", help="GGUF path (default: the packaged Gemma 3 270M Q4_K_M)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads of both servers")
    parser.add_argument("--slots", type=int, default=8, help="both servers' slots, and the streams of the passes")
    parser.add_argument("--context", type=int, default=8192, help="total KV cells (all slots together)")
    parser.add_argument("--limit", type=int, default=0, help="use the corpus's first N schemas (0: all)")
    parser.add_argument("--max-tokens", type=int, default=256, help="max_tokens of the validity pass")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8], help="streams of the TTFT passes")
    parser.add_argument("--latency-schemas", type=int, default=16, help="schemas per level's first/repeated pass")
    parser.add_argument("--latency-max-tokens", type=int, default=64)
    parser.add_argument("--request-timeout", type=float, default=300.0)
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--out", type=Path, default=RESULTS)
    opts = parser.parse_args()
    # what rillet.bench.cpu.systems.start_server reads
    opts.rillet_threads, opts.rillet_slots, opts.server_env, opts.peer_kv_unified = None, opts.slots, {}, False
    gguf = resolve_gguf(opts.model)
    entries = load()
    if opts.limit:
        entries = entries[:: max(1, len(entries) // opts.limit)][: opts.limit]  # spread over realistic and generated
    systems = [s for s in opts.systems if s != "llama-server" or (BUILD / "llama-server").is_file()]
    if "llama-server" in opts.systems and "llama-server" not in systems:
        print("skipping llama-server: bench/.build/llama-server is missing (bench/build_llama_server.sh)")
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
        "model": Path(gguf).name,
        "threads": opts.threads,
        "slots": opts.slots,
        "context": opts.context,
        "schemas": len(entries),
        "max_tokens": opts.max_tokens,
        "levels": opts.levels,
        "latency_schemas": opts.latency_schemas,
        "latency_max_tokens": opts.latency_max_tokens,
        "load_before": os.getloadavg()[0],
    }
    log = opts.out / "tmp" / f"constraints_servers_{time.strftime('%Y%m%d-%H%M%S')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for system in systems:
        print(f"{system}:")
        with start_server(system, opts, gguf, log) as server:
            results.append(asyncio.run(measure(system, server, opts, entries)))
    meta["load_after"] = os.getloadavg()[0]
    mask = None
    rillet = next((r for r in results if r["system"] == "rillet"), None)
    if rillet is not None:
        replayed = {o["name"]: o["token_ids"] for o in rillet.pop("outputs") if o["token_ids"]}
        ran = [e for e in entries if e.name in replayed]
        mask = mask_cost(gguf, ran, [replayed[e.name] for e in ran])
    text = render(meta, results, mask)
    write_results(
        "constraints", {"meta": meta, "results": results, "mask_cost": mask}, text, opts.tag, directory=opts.out
    )


if __name__ == "__main__":
    main()
