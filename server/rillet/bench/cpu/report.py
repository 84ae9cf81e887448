"""The CPU benchmark's tables (median and min-max over sweeps) and its ratios against the peers' targets."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from rillet.bench.cpu.measure import LevelResult
from rillet.bench.cpu.mixed import MixedResult
from rillet.bench.cpu.systems import PEERS, SYSTEMS, base
from rillet.bench.cpu.workloads import requests_for
from rillet.bench.stats import median

METRICS = (
    ("tokens_per_s", "tok/s", 1.0, "{:.1f}"),
    ("ttft_p50_s", "TTFT p50 ms", 1e3, "{:.0f}"),
    ("ttft_p99_s", "TTFT p99 ms", 1e3, "{:.0f}"),
    ("itl_p50_s", "ITL p50 ms", 1e3, "{:.1f}"),
    ("itl_p99_s", "ITL p99 ms", 1e3, "{:.1f}"),
    ("peak_rss_mb", "peak RSS MB", 1.0, "{:.0f}"),
)


def median_of(rows: Sequence[object], key: str) -> tuple[float, float, float]:
    values = [float(getattr(r, key)) for r in rows]
    return median(values), min(values), max(values)


def cell(rows: Sequence[object], key: str, scale: float, fmt: str) -> str:
    mid, low, high = median_of(rows, key)
    if len(rows) == 1:
        return fmt.format(mid * scale)
    return f"{fmt.format(mid * scale)} ({fmt.format(low * scale)}-{fmt.format(high * scale)})"


def grouped(results: Sequence[LevelResult]) -> dict[tuple[str, int], list[LevelResult]]:
    groups: dict[tuple[str, int], list[LevelResult]] = {}
    for r in results:
        groups.setdefault((r.system, r.concurrency), []).append(r)
    return groups


TARGETS = (
    # (metric, level, key, {peer: (op, target)}) — issue 10's targets and the earlier ones
    ("tok/s at c=8", 8, "tokens_per_s", {"llama-server": (">=", 0.9), "llama_cpp.server": (">=", 2.5)}),
    ("TTFT p50 at c=8", 8, "ttft_p50_s", {"llama-server": ("<=", 0.8)}),
    ("TTFT p99 at c=8", 8, "ttft_p99_s", {"llama-server": ("<=", 1.25)}),
    ("TTFT p50 at c=1", 1, "ttft_p50_s", {"llama-server": ("<=", 1.25)}),
    ("TTFT p99 at c=16", 16, "ttft_p99_s", {"llama-server": ("<=", 0.5)}),
    ("tok/s at c=16", 16, "tokens_per_s", {"llama-server": (">=", 1.2)}),
)
WORKLOAD_TARGETS = {
    # issue 26's: distinct 512-token prompts at 8 streams; one 3,500-token prompt alone
    "distinct-long": (
        ("tok/s at c=8", 8, "tokens_per_s", {"llama-server": (">=", 1.1)}),
        ("TTFT p50 at c=8", 8, "ttft_p50_s", {"llama-server": ("<=", 0.5)}),
        ("TTFT p99 at c=8", 8, "ttft_p99_s", {"llama-server": ("<=", 0.8)}),
    ),
    "long-prompt": (("TTFT p50 at c=1", 1, "ttft_p50_s", {"llama-server": ("<=", 1.0)}),),
}
"""The targets of the workloads whose own differ from TARGETS (standard and shared-prefix)."""


def ratio_row(metric: str, ours: str, peer: str, ratio: float, target: tuple[str, float] | None) -> dict[str, Any]:
    """One ratio of the report, and whether it meets its target (None: it has none)."""
    met = None if target is None else (ratio >= target[1] if target[0] == ">=" else ratio <= target[1])
    return {
        "metric": metric,
        "ours": ours,
        "peer": peer,
        "ratio": ratio,
        "target": "" if target is None else f"{target[0]} {target[1]}",
        "met": met,
    }


def ratios(results: Sequence[LevelResult], workload: str = "standard") -> list[dict[str, Any]]:
    """Each Rillet variant against each peer on the workload's targets (medians over sweeps); like-for-like caches."""
    groups = grouped(results)
    rows: list[dict[str, Any]] = []
    for label, level, key, targets in WORKLOAD_TARGETS.get(workload, TARGETS):
        for ours_name in ("rillet", "rillet-nocache"):
            ours = groups.get((ours_name, level))
            for peer in SYSTEMS:
                theirs = groups.get((peer, level))
                if base(peer) == "rillet" or not ours or not theirs:
                    continue
                ratio = median_of(ours, key)[0] / median_of(theirs, key)[0]
                target = targets.get(peer) if PEERS[ours_name] == peer or peer == "llama_cpp.server" else None
                rows.append(ratio_row(label, ours_name, peer, ratio, target))
    return rows


def ratio_lines(rows: Sequence[dict[str, Any]], console: Console, ours: str, peer: str) -> list[str]:
    """Print the ratios' table; return its markdown section (`ours`, `peer`: its two system columns' headings)."""
    table = Table("metric", ours, peer, "ratio", "target", "met", title="Ratios (medians)")
    md = [
        "",
        f"## Ratios ({ours} / {peer}, medians over sweeps)",
        "",
        f"| metric | {ours} | {peer} | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        met = "" if row["met"] is None else ("yes" if row["met"] else "NO")
        table.add_row(row["metric"], row["ours"], row["peer"], f"{row['ratio']:.2f}", row["target"], met)
        md.append(f"| {row['metric']} | {row['ours']} | {row['peer']} | {row['ratio']:.2f} | {row['target']} | {met} |")
    console.print(table)
    return md


def render(results: Sequence[LevelResult], meta: dict[str, Any], console: Console) -> str:
    """Print the rich tables; return the markdown report."""
    groups = grouped(results)
    sweeps = len({r.sweep for r in results})
    title = f"Rillet vs peers, CPU ({meta['date']}; {meta['threads']} threads; median (min-max) of {sweeps} sweeps)"
    table = Table("system", "c", *(m[1] for m in METRICS), "tokens/req", title=title)
    md = [f"# CPU text benchmark {meta['date']}\n", *(f"- {k}: {v}" for k, v in meta.items()), ""]
    md.append(
        f"Median over {sweeps} sweeps, (min-max) across sweeps. Per level: "
        f"{', '.join(f'c={c}: {requests_for(c, meta_opts(meta))} requests' for c in meta['levels'])}.\n"
    )
    md.append("| system | c | " + " | ".join(m[1] for m in METRICS) + " | tokens/req | short streams |")
    md.append("|---|---|" + "---|" * (len(METRICS) + 2))
    for level in meta["levels"]:
        for system in SYSTEMS:
            rows = groups.get((system, level))
            if not rows:
                continue
            cells = [cell(rows, key, scale, fmt) for key, _, scale, fmt in METRICS]
            per_req = median(r.tokens / r.requests for r in rows)
            short = sum(r.short_streams for r in rows)
            total = sum(r.requests for r in rows)
            table.add_row(system, str(level), *cells, f"{per_req:.1f}")
            md.append(f"| {system} | {level} | " + " | ".join(cells) + f" | {per_req:.1f} | {short}/{total} |")
        table.add_section()
    console.print(table)
    eff = Table("system", "c", "server CPU-ms/token", "client CPU-ms/token", title="CPU cost per token (median)")
    md += ["", "## CPU cost per token (median over sweeps)", ""]
    md += ["| system | c | server CPU-ms/token | client CPU-ms/token |", "|---|---|---|---|"]
    for level in meta["levels"]:
        for system in SYSTEMS:
            rows = groups.get((system, level))
            if not rows:
                continue
            server = median(1e3 * r.server_cpu_s / r.tokens for r in rows)
            client = median(1e3 * r.client_cpu_s / r.tokens for r in rows)
            eff.add_row(system, str(level), f"{server:.2f}", f"{client:.2f}")
            md.append(f"| {system} | {level} | {server:.2f} | {client:.2f} |")
    console.print(eff)
    md += ratio_lines(ratios(results, meta["workload"]), console, "Rillet", "peer")
    return "\n".join(md) + "\n"


MIXED_METRICS = (
    ("chat_itl_p50_alone_s", "chat ITL p50 alone ms", 1e3, "{:.1f}"),
    ("chat_itl_p99_alone_s", "chat ITL p99 alone ms", 1e3, "{:.1f}"),
    ("chat_itl_p50_s", "chat ITL p50 mixed ms", 1e3, "{:.1f}"),
    ("chat_itl_p99_s", "chat ITL p99 mixed ms", 1e3, "{:.1f}"),
    ("chat_itl_max_s", "chat ITL max mixed ms", 1e3, "{:.0f}"),
    ("long_ttft_p50_s", "long TTFT p50 ms", 1e3, "{:.0f}"),
    ("long_ttft_p99_s", "long TTFT p99 ms", 1e3, "{:.0f}"),
    ("long_done_s", "longs done ms", 1e3, "{:.0f}"),
)
CHAT_STRETCH = 2.0
"""Issue 26: the chat streams' gap p99 beside the long prompts at most this many times their own alone."""


def mixed_ratios(results: Sequence[MixedResult]) -> list[dict[str, Any]]:
    """The mixed load's ratios (medians over sweeps).

    Each system's chat gap p99 beside the long prompts against its own alone (a target for Rillet's); the long
    prompts' TTFT p50 of each Rillet variant against its like-for-like llama-server's.
    """
    by_system: dict[str, list[MixedResult]] = {}
    for r in results:
        by_system.setdefault(r.system, []).append(r)
    rows: list[dict[str, Any]] = []
    for system in (s for s in SYSTEMS if s in by_system):
        rows_of = by_system[system]
        ratio = median_of(rows_of, "chat_itl_p99_s")[0] / median_of(rows_of, "chat_itl_p99_alone_s")[0]
        target = ("<=", CHAT_STRETCH) if base(system) == "rillet" else None
        rows.append(ratio_row("chat ITL p99, mixed / alone", system, system, ratio, target))
    for ours, peer in PEERS.items():
        if ours in by_system and peer in by_system:
            ratio = median_of(by_system[ours], "long_ttft_p50_s")[0] / median_of(by_system[peer], "long_ttft_p50_s")[0]
            rows.append(ratio_row("long TTFT p50", ours, peer, ratio, ("<=", 1.0)))
    return rows


def render_mixed(results: Sequence[MixedResult], meta: dict[str, Any], console: Console) -> str:
    """Print the mixed load's tables; return its markdown report."""
    sweeps = len({r.sweep for r in results})
    title = f"Mixed load, CPU ({meta['date']}; {meta['threads']} threads; median (min-max) of {sweeps} sweeps)"
    table = Table("system", *(m[1] for m in MIXED_METRICS), "gaps", "short", title=title)
    md = [f"# CPU text benchmark, mixed load {meta['date']}\n", *(f"- {k}: {v}" for k, v in meta.items()), ""]
    batch_note = ", Rillet's as PRIORITY_BATCH" if meta.get("long_priority") == "batch" else ""
    md.append(
        f"{meta['chat_streams']} chat streams of {meta['chat_tokens']}-token requests from short prompts (after a "
        f"lead-in request each): {meta['chat_requests']} requests each alone; then again, going on until "
        f"{meta['long_requests']} requests with distinct {meta['prompt_tokens']}-token prompts "
        f"({meta['max_tokens']} output tokens{batch_note}), "
        f"sent at once, have all ended: the mixed gaps are those that ended "
        f"meanwhile. Median over {sweeps} sweeps, (min-max) across sweeps.\n"
    )
    md.append("| system | " + " | ".join(m[1] for m in MIXED_METRICS) + " | mixed gaps | short streams |")
    md.append("|---|" + "---|" * (len(MIXED_METRICS) + 2))
    for system in SYSTEMS:
        rows = [r for r in results if r.system == system]
        if not rows:
            continue
        cells = [cell(rows, key, scale, fmt) for key, _, scale, fmt in MIXED_METRICS]
        gaps = cell(rows, "chat_gaps", 1.0, "{:.0f}")
        short = str(sum(r.short_streams for r in rows))
        table.add_row(system, *cells, gaps, short)
        md.append(f"| {system} | " + " | ".join(cells) + f" | {gaps} | {short} |")
    console.print(table)
    md += ratio_lines(mixed_ratios(results), console, "system", "against")
    return "\n".join(md) + "\n"


def meta_opts(meta: dict[str, Any]) -> argparse.Namespace:
    return argparse.Namespace(min_requests=meta["min_requests"], requests_per_slot=meta["requests_per_level_factor"])
