"""What `rillet bench` leaves behind: the JSON results, a summary table that never cuts a figure, and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

LATENCIES = (("TTFT", "ttft_ms"), ("ITL", "itl_ms"), ("TTFA", "ttfa_ms"), ("e2e", "e2e_ms"))
NARROW = "  "
"""The indent of a level's label/value rows when not even two columns fit the width."""

UNBOUNDED = 1_000_000
"""A width no table reaches: a table is measured at its natural width against it."""
Column = tuple[str, list[str]]
"""A header and one cell per level (a cell may hold several lines)."""


def level_name(summary: dict[str, Any]) -> str:
    level = summary["level"]
    return f"c={level['concurrency']}" if "concurrency" in level else f"{level['rate']:g}/s"


def _ms(dist: dict[str, float] | None, key: str) -> str:
    return "-" if dist is None else f"{dist[key]:.1f}"


def errors_cell(summary: dict[str, Any]) -> str:
    """A level's errors, one line per code and reason with its count ("0" when none)."""
    return "\n".join(f"{_key(e)}: {e['count']}" for e in summary["errors"]) or "0"


def _key(error: dict[str, Any]) -> str:
    return f"{error['code']} {error['reason']}".rstrip()


def columns(results: dict[str, Any]) -> list[Column]:
    """The summary's columns, the level first; latencies no level measured are left out."""
    levels = results["levels"]
    out: list[Column] = [("level", [level_name(s) for s in levels])]
    out.append(("ok/requests", [f"{s['ok']}/{s['requests']}" for s in levels]))
    for name, key in LATENCIES:
        if any(s[key] is not None for s in levels):
            out.append((f"{name} p50/p99 ms", [f"{_ms(s[key], 'p50')}/{_ms(s[key], 'p99')}" for s in levels]))
    out.append(("tokens/s", [f"{s['tokens_per_s']:,.0f}" for s in levels]))
    out.append(("msgs/s", [f"{s['messages_per_s']:,.0f}" for s in levels]))
    if any(s["audio_s_per_s"] for s in levels):
        out.append(("audio s/s", [f"{s['audio_s_per_s']:.2f}" for s in levels]))
    out.append(("errors", [errors_cell(s) for s in levels]))
    out.append(("lost", [str(s["lost"]) for s in levels]))
    return out


def title(results: dict[str, Any]) -> str:
    return f"rillet bench → {results['target']}  ({results['plan']['workload']}, {results['plan']['rpc']})"


def _table(columns: list[Column]) -> Table:
    table = Table()
    for header, _ in columns:
        table.add_column(header, justify="left" if header == "errors" else "right", no_wrap=True)
    for row in zip(*(cells for _, cells in columns), strict=True):
        table.add_row(*row)
    return table


def _fits(console: Console, columns: list[Column]) -> bool:
    unbounded = console.options.update_width(UNBOUNDED)  # measured at its natural width, not clamped to the console's
    return Measurement.get(console, unbounded, _table(columns)).maximum <= console.width


def renderables(results: dict[str, Any], console: Console) -> list[RenderableType]:
    """The summary at the console's width, never a figure cut.

    One table when it fits; else the same columns folded into several tables, each led by the level; else (not even
    the level and one column fit) each level as rows of label and value.
    """
    level, *rest = columns(results)
    groups: list[list[Column]] = [[level]]
    for column in rest:
        if _fits(console, [*groups[-1], column]):
            groups[-1].append(column)
        elif _fits(console, [level, column]):
            groups.append([level, column])
        else:
            return [Text(title(results)), *_label_value_rows(results)]
    return [Text(title(results)), *(_table(group) for group in groups)]


def _label_value_rows(results: dict[str, Any]) -> list[RenderableType]:
    level, *rest = columns(results)
    rows: list[RenderableType] = []
    for index, name in enumerate(level[1]):
        rows.append(Text(name, style="bold"))
        for header, cells in rest:
            lines = cells[index].split("\n")
            rows += [Text(f"{NARROW}{header}: {lines[0]}"), *(Text(f"{NARROW}{NARROW}{line}") for line in lines[1:])]
    return rows


def error_samples(results: dict[str, Any]) -> list[str]:
    """A line per level, code and reason that failed, with the message of one such failure."""
    return [f"{level_name(s)} {_key(e)} x{e['count']}: {e['sample']}" for s in results["levels"] for e in s["errors"]]


def show(results: dict[str, Any], console: Console) -> None:
    """Print the summary and, below it, a sample message of each kind of error (long lines left whole)."""
    for renderable in renderables(results, console):
        console.print(renderable, soft_wrap=isinstance(renderable, Text))
    if samples := error_samples(results):
        console.print("errors, a sample message each:", soft_wrap=True)
        for line in samples:
            console.print(Text(f"{NARROW}{line}"), soft_wrap=True)


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
