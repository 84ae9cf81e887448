"""Summaries of one load level: latency percentiles, throughput, errors by code, streams lost and why."""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from typing import Any

from rillet.server.loadgen.streams import Record

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of sorted `values`, linearly interpolated between closest ranks."""
    if not values:
        return math.nan
    position = (len(values) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def distribution_ms(seconds: Sequence[float]) -> dict[str, float] | None:
    """p50/p90/p99/max/mean in milliseconds, with the sample count; None without samples."""
    if not seconds:
        return None
    values = sorted(seconds)
    result = {f"p{q}": round(percentile(values, q) * 1000, 4) for q in PERCENTILES}
    result["max"] = round(values[-1] * 1000, 4)
    result["mean"] = round(sum(values) / len(values) * 1000, 4)
    result["count"] = len(values)
    return result


def summarize(records: Sequence[Record], elapsed_s: float, level: dict[str, float]) -> dict[str, Any]:
    """One level's results (the JSON shape `rillet bench` writes per level)."""
    text = [r for r in records if r.kind == "text"]
    speech = [r for r in records if r.kind == "speech"]
    ok = [r for r in records if r.ok]
    errors = collections.Counter(r.error for r in records if r.error is not None)
    lost = collections.Counter(r.lost for r in records if r.lost is not None)
    tokens = sum(r.tokens for r in text)
    text_messages = sum(r.messages for r in text)
    elapsed = max(elapsed_s, 1e-9)
    tpot = [
        (r.ended - r.first) / (r.tokens - 1)
        for r in text
        if r.ok and r.first is not None and r.ended is not None and r.tokens > 1
    ]
    return {
        "level": level,
        "elapsed_s": round(elapsed_s, 4),
        "requests": len(records),
        "ok": len(ok),
        "errors": dict(sorted(errors.items())),
        "lost": sum(lost.values()),
        "lost_reasons": dict(lost.most_common(10)),
        "ttft_ms": distribution_ms([r.first - r.started for r in text if r.ok and r.first is not None]),
        "itl_ms": distribution_ms([g for r in text if r.ok for g in r.gaps]),
        "tpot_ms": distribution_ms(tpot),
        "ttfa_ms": distribution_ms([r.first - r.started for r in speech if r.ok and r.first is not None]),
        "e2e_ms": distribution_ms([r.ended - r.started for r in ok if r.ended is not None]),
        "tokens": tokens,
        "tokens_per_s": round(tokens / elapsed, 2),
        "messages_per_s": round(text_messages / elapsed, 2),
        "tokens_per_message": round(tokens / text_messages, 3) if text_messages else None,
        "audio_s": round(sum(r.audio_s for r in speech), 4),
        "audio_s_per_s": round(sum(r.audio_s for r in speech) / elapsed, 4),
    }
