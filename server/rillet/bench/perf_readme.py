"""Rewrites README.md's performance block (between `<!-- perf:begin -->` and `<!-- perf:end -->`) from bench/results/.

The table is generated, never typed: for each scenario the newest floor_*.json that measured it (bench/floor_compare.py:
Rillet against the raw grpc.aio floor, ratios with their spread), workers_*.json (bench/workers.py: tokens/s at 1 and 2
processes), ghz_*.json (bench/ghz.py: an independent Go load generator) and ttft_breakdown_*.json
(bench/ttft_breakdown.py: where idle TTFT goes, the engine's share apart from the serving path's) each give their rows,
with the file they came from. Every figure over rounds (a median, p10-p90, min-max) is recomputed here from the
rounds' values the files keep, by rillet.bench.stats' one definition; figures within a round are as the file has them.

Run: .venv/bin/python bench/perf_readme.py [--check]   (--check: exit 1 when README.md is not what it would write)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from rillet.bench.results import RESULTS, ROOT
from rillet.bench.stats import median, spread

README = ROOT / "README.md"
BEGIN, END = "<!-- perf:begin -->", "<!-- perf:end -->"

LABELS = {
    ("idle_ttft", "ttft_p50_ms"): "idle TTFT p50 (ms), one-shot Generate, 1 token",
    ("idle_ttft", "ttft_p99_ms"): "idle TTFT p99 (ms)",
    ("stream64", "tokens_per_s"): "64 streams: tokens/s delivered",
    ("stream64", "messages_per_s"): "64 streams: messages/s",
    ("paced512", "itl_p50_ms"): "512 sessions x 50 tokens/s: inter-token gap p50 (ms)",
    ("paced512", "itl_p99_ms"): "512 sessions x 50 tokens/s: inter-token gap p99 (ms)",
    ("paced512", "tokens_per_s"): "512 sessions x 50 tokens/s: tokens/s delivered",
}


def untagged(pattern: str) -> list[Path]:
    """Result files named by their time alone, oldest first.

    A tag after the time (`floor_<time>-<tag>.json`) marks an experiment or a run on another machine: the README's
    tables are this machine's.
    """
    return sorted(path for path in RESULTS.glob(pattern) if re.fullmatch(r"[a-z_]+_\d{8}-\d{4,6}", path.stem))


def newest(pattern: str) -> tuple[Path, dict[str, Any]] | None:
    files = untagged(pattern)
    if not files:
        return None
    return files[-1], json.loads(files[-1].read_text(encoding="utf-8"))


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def over_rounds(figure: dict[str, Any]) -> dict[str, float]:
    """A figure's spread over rounds, from the rounds' values when the file kept them."""
    return spread(figure["values"]) if "values" in figure else figure


def newest_per_scenario() -> list[tuple[str, Path, dict[str, Any]]]:
    """Each scenario with the newest floor_*.json that measured it (runs may measure a subset of the scenarios)."""
    found: dict[str, tuple[str, Path, dict[str, Any]]] = {}
    for path in reversed(untagged("floor_*.json")):
        results = json.loads(path.read_text(encoding="utf-8"))
        for name in results["scenarios"]:
            found.setdefault(name, (name, path, results))
    order = [name for name, _ in LABELS]
    return sorted(found.values(), key=lambda f: order.index(f[0]) if f[0] in order else len(order))


def floor_rows(sources: list[tuple[str, Path, dict[str, Any]]]) -> list[str]:
    rows = [
        "Rillet against the raw grpc.aio floor (`bench/floor.py`), alternating rounds on one machine (each scenario's "
        "file below; synthetic TEST engine). Ratio = Rillet / floor, median over rounds and its p10-p90:",
        "",
        "| what | floor | Rillet | ratio (p10-p90) | target |",
        "|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for name, path, results in sources:
        scenario = results["scenarios"][name]
        floor, rillet = (
            {metric: over_rounds(figure) for metric, figure in scenario[system].items()}
            for system in ("floor", "rillet")
        )
        for metric, figure in scenario["ratios"].items():
            label = LABELS.get((name, metric), f"{name} {metric}")
            ratio, target = over_rounds(figure), scenario["targets"].get(metric, "")
            rows.append(
                f"| {label} | {_num(floor[metric]['median'])} | {_num(rillet[metric]['median'])} | "
                f"{ratio['median']:.2f}x ({ratio['p10']:.2f}-{ratio['p90']:.2f}) | {target} |"
            )
        offered = scenario["concurrency"] * scenario["pace_steps_per_s"]["floor"]
        if offered and "tokens_per_s" in rillet:
            delivered = min(floor["tokens_per_s"]["median"], rillet["tokens_per_s"]["median"])
            if delivered < 0.9 * offered:
                notes.append(
                    f"{name}: {offered:,.0f} tokens/s were offered and {delivered:,.0f} delivered by the slower side: "
                    "the machine (its load, or the one client process) could not carry this load, so its gap ratio "
                    "compares two overloaded runs."
                )
        if "lost" in scenario["rillet"]:
            lost = sum(scenario["rillet"]["lost"]["values"])
            rows.append(f"| {name}: streams lost or failed, all rounds | {sum(scenario['floor']['lost']['values']):.0f}"
                        f" | {lost:.0f} | | 0 |")  # fmt: skip
        loads = [row["load_before"] for row in scenario["rounds"]]
        notes.append(
            f"{name}: `{path.relative_to(ROOT)}`, {results['rounds']} rounds, {results['machine']['cpus']} shared "
            f"CPUs, 1-minute load average {min(loads):.1f} to {max(loads):.1f} before its rounds."
        )
    return [*rows, "", *(f"- {note}" for note in notes)]


def workers_rows(path: Path, results: dict[str, Any]) -> list[str]:
    rows = ["", f"`rillet serve --workers N`, synthetic TEST engine (`{path.relative_to(ROOT)}`):", "",
            "| processes | connections | tokens/s (median, min-max) | lost |", "|---|---|---|---|"]  # fmt: skip
    for level in results["levels"]:
        t = over_rounds(level["tokens_per_s"])
        rows.append(
            f"| {level['workers']} | {level['connections']} | {_num(t['median'])} ({_num(t['min'])}-{_num(t['max'])})"
            f" | {level['lost']} |"
        )
    return rows


def ghz_rows(path: Path, results: dict[str, Any]) -> list[str]:
    rows = ["", f"`ghz` (Go) against `Generate`, beside `rillet bench` at the same load (`{path.relative_to(ROOT)}`):",
            "", "| client | streams | tokens/stream | calls/s | tokens/s | latency p50 / p99 (ms, whole stream) |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for row in results["rows"]:
        runs = results["runs"]["ghz" if row["client"].startswith("ghz") else "rillet bench"]
        row = {**row, **{key: median(run[key] for run in runs) for key in GHZ_MEDIANS}}
        rows.append(
            f"| {row['client']} | {row['concurrency']} | {row['max_tokens']} | {_num(row['calls_per_s'])} | "
            f"{_num(row['tokens_per_s'])} | {row['latency_p50_ms']:.1f} / {row['latency_p99_ms']:.1f} |"
        )
    return rows


GHZ_MEDIANS = ("calls_per_s", "tokens_per_s", "latency_p50_ms", "latency_p99_ms")
"""bench/ghz.py's row figures: medians over its runs."""


def ttft_rows(path: Path, results: dict[str, Any]) -> list[str]:
    segments = results["segments_median_us"]
    ratio, engine = (spread(row[key] for row in results["per_round"]) for key in ("ratio", "engine_ratio"))
    pinned = ", servers on one CPU and the client on the other" if results.get("pinned") else ""
    rows = [
        "",
        f"Where idle TTFT goes (`{path.relative_to(ROOT)}`: {results['rounds']} rounds of "
        f"{results['calls_per_round']} sequential one-token calls{pinned}; medians, µs). floor+engine is the "
        "floor's handler taking its tokens from the synthetic TEST engine's step loop, none of Rillet's serving path:",
        "",
        "| | floor | floor+engine | Rillet |",
        "|---|---|---|---|",
    ]
    labels = {
        "ttft": "TTFT p50",
        "ttft_p99": "TTFT p99",
        "in_handler": "handler entered → first message produced",
        "cpu_per_call": "server CPU per call, all threads",
    }
    for key, label in labels.items():
        rows.append(f"| {label} | " + " | ".join(f"{segments[s][key]:.0f}" for s in ("floor", "floor+engine", "rillet"))
                    + " |")  # fmt: skip
    rows += [
        "",
        f"TTFT p50 per round: floor+engine / floor {engine['median']:.2f}x ({engine['min']:.2f}-{engine['max']:.2f}), "
        f"Rillet / floor {ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f}).",
    ]
    return rows


def newest_ttft_breakdown() -> tuple[Path, dict[str, Any]] | None:
    """The newest ttft_breakdown_*.json that measured the floor with the engine (older runs did not)."""
    for path in reversed(untagged("ttft_breakdown_*.json")):
        results = json.loads(path.read_text(encoding="utf-8"))
        if "floor+engine" in results["segments_median_us"]:
            return path, results
    return None


def block() -> str:
    lines: list[str] = []
    if sources := newest_per_scenario():
        lines += floor_rows(sources)
    if (workers := newest("workers_*.json")) is not None:
        lines += workers_rows(*workers)
    if (ghz := newest("ghz_*.json")) is not None:
        lines += ghz_rows(*ghz)
    if (breakdown := newest_ttft_breakdown()) is not None:
        lines += ttft_rows(*breakdown)
    if not lines:
        lines = ["No results recorded yet: run bench/floor_compare.py."]
    return "\n".join(
        [BEGIN, "<!-- generated by bench/perf_readme.py from bench/results/; do not edit -->", *lines, END]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md is stale")
    args = parser.parse_args()
    text = README.read_text(encoding="utf-8")
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        sys.exit(f"README.md has no {BEGIN} ... {END} block")
    updated = text[:start] + block() + text[end + len(END) :]
    if args.check:
        sys.exit(0 if updated == text else "README.md's performance block is stale: run bench/perf_readme.py")
    README.write_text(updated, encoding="utf-8")
    print("README.md performance block rewritten")


if __name__ == "__main__":
    main()
