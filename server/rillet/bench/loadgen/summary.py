"""One load level's summary: latency percentiles, throughput, errors by code and reason, streams lost and why."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

from rillet.bench.stats import distribution_ms
from rillet.bench.wire import Status, Stream

LOST_REASONS = 10
"""How many distinct reasons for lost streams a level keeps (the commonest)."""


def errors(statuses: Sequence[Status]) -> list[dict[str, Any]]:
    """Failures grouped by code and ErrorInfo reason, the commonest first: each with its count and a sample message."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for status in statuses:
        group = groups.setdefault(
            (status.code.name, status.reason),
            {"code": status.code.name, "reason": status.reason, "count": 0, "sample": status.message},
        )
        group["count"] += 1
    return sorted(groups.values(), key=lambda g: (-g["count"], g["code"], g["reason"]))


def summarize(records: Sequence[Stream], elapsed_s: float, level: dict[str, float]) -> dict[str, Any]:
    """One level's results (the JSON shape `rillet bench` writes per level)."""
    text = [r for r in records if r.kind == "text"]
    speech = [r for r in records if r.kind == "speech"]
    ok = [r for r in records if r.ok]
    failed = [r.error for r in records if r.error is not None]
    lost = collections.Counter(r.lost for r in records if r.lost is not None)
    tokens = sum(r.tokens for r in text)
    text_messages = sum(r.outputs for r in text)
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
        "failed": len(failed),
        "errors": errors(failed),
        "lost": sum(lost.values()),
        "lost_reasons": dict(lost.most_common(LOST_REASONS)),
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
