"""The CPU benchmark's tables (median and min-max over sweeps) and its ratios against the peers' targets."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from rillet.bench.cpu.measure import LevelResult, requests_for
from rillet.bench.cpu.systems import PEERS, SYSTEMS, base
from rillet.bench.stats import median

METRICS = (
    ("tokens_per_s", "tok/s", 1.0, "{:.1f}"),
    ("ttft_p50_s", "TTFT p50 ms", 1e3, "{:.0f}"),
    ("ttft_p99_s", "TTFT p99 ms", 1e3, "{:.0f}"),
    ("itl_p50_s", "ITL p50 ms", 1e3, "{:.1f}"),
    ("itl_p99_s", "ITL p99 ms", 1e3, "{:.1f}"),
    ("peak_rss_mb", "peak RSS MB", 1.0, "{:.0f}"),
)


def median_of(rows: Sequence[LevelResult], key: str) -> tuple[float, float, float]:
    values = [float(getattr(r, key)) for r in rows]
    return median(values), min(values), max(values)


def cell(rows: Sequence[LevelResult], key: str, scale: float, fmt: str) -> str:
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


def ratios(results: Sequence[LevelResult]) -> list[dict[str, Any]]:
    """Each Rillet variant against each peer on the targets (medians over sweeps); like-for-like cache settings."""
    groups = grouped(results)
    rows: list[dict[str, Any]] = []
    for label, level, key, targets in TARGETS:
        for ours_name in ("rillet", "rillet-nocache"):
            ours = groups.get((ours_name, level))
            for peer in SYSTEMS:
                theirs = groups.get((peer, level))
                if base(peer) == "rillet" or not ours or not theirs:
                    continue
                ratio = median_of(ours, key)[0] / median_of(theirs, key)[0]
                target = targets.get(peer) if PEERS[ours_name] == peer or peer == "llama_cpp.server" else None
                met = None if target is None else (ratio >= target[1] if target[0] == ">=" else ratio <= target[1])
                rows.append(
                    {
                        "metric": label,
                        "ours": ours_name,
                        "peer": peer,
                        "ratio": ratio,
                        "target": "" if target is None else f"{target[0]} {target[1]}",
                        "met": met,
                    }
                )
    return rows


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
    ratio_table = Table("metric", "Rillet", "peer", "ratio", "target", "met", title="Ratios (medians)")
    md += [
        "",
        "## Ratios (Rillet / peer, medians over sweeps)",
        "",
        "| metric | Rillet | peer | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in ratios(results):
        met = "" if row["met"] is None else ("yes" if row["met"] else "NO")
        ratio_table.add_row(row["metric"], row["ours"], row["peer"], f"{row['ratio']:.2f}", row["target"], met)
        md.append(f"| {row['metric']} | {row['ours']} | {row['peer']} | {row['ratio']:.2f} | {row['target']} | {met} |")
    console.print(ratio_table)
    return "\n".join(md) + "\n"


def meta_opts(meta: dict[str, Any]) -> argparse.Namespace:
    return argparse.Namespace(min_requests=meta["min_requests"], requests_per_slot=meta["requests_per_level_factor"])
