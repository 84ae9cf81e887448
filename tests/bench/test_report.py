"""`rillet bench`'s summary: never a figure cut, at any width: one table, folded tables, or label/value rows."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from rillet.bench.loadgen.report import columns, error_samples, show


def level(concurrency: int, *, errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    latency = {"p50": 26.123 * concurrency, "p90": 200.0, "p99": 259.55 * concurrency, "max": 900.0}
    return {
        "level": {"concurrency": concurrency},
        "requests": 2000,
        "ok": 1999,
        "failed": len(errors or []),
        "errors": errors or [],
        "lost": 0,
        "lost_reasons": {},
        "ttft_ms": latency,
        "itl_ms": latency,
        "tpot_ms": latency,
        "ttfa_ms": None,
        "e2e_ms": latency,
        "tokens": 123_456,
        "tokens_per_s": 186_126.4,
        "messages_per_s": 27_726.0,
        "tokens_per_message": 6.7,
        "audio_s": 0.0,
        "audio_s_per_s": 0.0,
    }


FULL = {"code": "RESOURCE_EXHAUSTED", "reason": "QUEUE_FULL", "count": 3, "sample": "the admission queue is full"}
ENDED = {"code": "INVALID_ARGUMENT", "reason": "SOURCE_ENDED", "count": 1, "sample": "the generation had ended"}
RESULTS = {
    "target": "127.0.0.1:50051",
    "plan": {"workload": "text", "rpc": "oneshot"},
    "levels": [level(1), level(16, errors=[FULL, ENDED]), level(64)],
}


def render(width: int) -> str:
    out = io.StringIO()
    show(RESULTS, Console(file=out, width=width, color_system=None))
    return out.getvalue()


@pytest.mark.parametrize("width", [200, 80, 40, 24])
def test_no_figure_is_ever_cut(width: int) -> None:
    text = render(width)
    assert "…" not in text
    for header, cells in columns(RESULTS):
        for cell in cells:
            for line in cell.split("\n"):
                assert line in text, f"{header} {line!r} is not whole at {width} columns"


def test_wide_terminals_get_one_table_and_80_columns_a_folded_one() -> None:
    assert render(200).count("┃ level ┃") == 1
    folded = render(80)
    assert folded.count("┃ level ┃") >= 2  # each part of the fold is led by the level
    assert all(len(line) <= 80 for line in folded.splitlines() if line.startswith(("┃", "│", "┏", "└")))


def test_narrow_terminals_get_label_value_rows() -> None:
    text = render(24)
    assert "┃" not in text
    assert "  ok/requests: 1999/2000" in text
    assert "  TTFT p50/p99 ms: 418.0/4152.8" in text


def test_errors_show_code_reason_and_count_and_a_sample_message_each() -> None:
    text = render(200)
    assert "RESOURCE_EXHAUSTED QUEUE_FULL: 3" in text
    assert "INVALID_ARGUMENT SOURCE_ENDED: 1" in text
    assert error_samples(RESULTS) == [
        "c=16 RESOURCE_EXHAUSTED QUEUE_FULL x3: the admission queue is full",
        "c=16 INVALID_ARGUMENT SOURCE_ENDED x1: the generation had ended",
    ]
    assert "  c=16 RESOURCE_EXHAUSTED QUEUE_FULL x3: the admission queue is full" in text


def test_latencies_no_level_measured_are_left_out() -> None:
    headers = [header for header, _ in columns(RESULTS)]
    assert "TTFA p50/p99 ms" not in headers
    assert "audio s/s" not in headers
    assert headers[:3] == ["level", "ok/requests", "TTFT p50/p99 ms"]
