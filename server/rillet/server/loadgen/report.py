"""What `rillet bench` leaves behind: the JSON results, a terminal table, and a PNG plot (when matplotlib is there)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

LATENCIES = ("ttft_ms", "itl_ms", "ttfa_ms", "e2e_ms")


def level_name(summary: dict[str, Any]) -> str:
    level = summary["level"]
    return f"c={level['concurrency']}" if "concurrency" in level else f"{level['rate']:g}/s"


def _ms(dist: dict[str, float] | None, key: str) -> str:
    return "-" if dist is None else f"{dist[key]:.1f}"


def table(results: dict[str, Any]) -> Table:
    """One row per level: latencies (p50/p99 ms), throughput, errors and lost streams."""
    out = Table(title=f"rillet bench → {results['target']}  ({results['plan']['workload']}, {results['plan']['rpc']})")
    for column in ("level", "ok/requests", "TTFT p50/p99", "ITL p50/p99", "TTFA p50/p99", "e2e p50/p99"):
        out.add_column(column, justify="right")
    for column in ("tokens/s", "msgs/s", "audio s/s", "errors", "lost"):
        out.add_column(column, justify="right")
    for s in results["levels"]:
        errors = ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) or "0"
        out.add_row(
            level_name(s),
            f"{s['ok']}/{s['requests']}",
            *(f"{_ms(s[k], 'p50')}/{_ms(s[k], 'p99')}" for k in LATENCIES),
            f"{s['tokens_per_s']:,.0f}",
            f"{s['messages_per_s']:,.0f}",
            f"{s['audio_s_per_s']:.2f}",
            errors,
            f"[red]{s['lost']}[/red]" if s["lost"] else "0",
        )
    return out


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def plot(results: dict[str, Any], path: Path) -> bool:
    """Latency percentiles and throughput against the load level; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    levels = results["levels"]
    by_concurrency = all("concurrency" in s["level"] for s in levels)
    xs = [s["level"]["concurrency"] if "concurrency" in s["level"] else s["level"]["rate"] for s in levels]
    figure, (latency, throughput) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label in (("ttft_ms", "TTFT"), ("itl_ms", "inter-token gap"), ("ttfa_ms", "TTFA")):
        for q, style in (("p50", "-o"), ("p99", "--^")):
            ys = [s[key][q] if s[key] is not None else None for s in levels]
            if any(y is not None for y in ys):
                latency.plot(xs, [y if y is not None else float("nan") for y in ys], style, label=f"{label} {q}")
    latency.set_yscale("log")
    latency.set_ylabel("ms")
    latency.set_title("client-side latency")
    throughput.plot(xs, [s["tokens_per_s"] for s in levels], "-o", label="tokens/s")
    if any(s["audio_s_per_s"] for s in levels):
        audio = throughput.twinx()
        audio.plot(xs, [s["audio_s_per_s"] for s in levels], "-s", color="tab:orange", label="audio s/s")
        audio.set_ylabel("audio seconds per second")
        audio.legend(loc="lower right")
    throughput.set_ylabel("tokens per second")
    throughput.set_title("throughput")
    for axes in (latency, throughput):
        axes.set_xlabel("concurrent streams" if by_concurrency else "offered requests per second")
        if by_concurrency and len(set(xs)) > 1:
            axes.set_xscale("log", base=2)
        axes.grid(True, alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="upper left", fontsize="small")
    figure.suptitle(f"rillet bench → {results['target']} · {results['plan']['workload']} · {results['started']}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
