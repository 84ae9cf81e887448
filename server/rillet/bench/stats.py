"""The one percentile definition behind every benchmark figure, and the summaries built on it.

`percentile(values, q)`: sort the n values; the q-th percentile (0 <= q <= 100) sits at the 0-based position
(n - 1) * q / 100, and between the two values around it is interpolated linearly. It is Hyndman and Fan's
definition 7: numpy's default ("linear"), the stdlib's `statistics.quantiles(method="inclusive")`, and at q = 50
exactly `statistics.median`. With few samples p99 lies between the two largest rather than at the largest.

Every figure the benchmarks write goes through it: latency percentiles within a run, and the median and p10/p90 of
a figure over rounds. (The Go load client, client_sdk/go/internal/streamload, computes the same definition in Go;
ghz reports its own percentiles, and bench/render_telemetry.py evaluates Prometheus' histogram_quantile on purpose,
as the dashboard would.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0-100) of `values` by the definition above; NaN when there are none."""
    return _at(sorted(values), q)


def median(values: Iterable[float]) -> float:
    """The 50th percentile (equal to statistics.median)."""
    return _at(sorted(values), 50)


def _at(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile of values already sorted ascending."""
    if not 0 <= q <= 100:
        raise ValueError(f"a percentile is between 0 and 100, not {q}")
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def distribution_ms(seconds: Iterable[float], quantiles: Sequence[int] = (50, 90, 99)) -> dict[str, float] | None:
    """Percentiles, max and mean in milliseconds of samples in seconds, with their count; None without samples."""
    ordered = sorted(seconds)
    if not ordered:
        return None
    result: dict[str, float] = {f"p{q}": round(_at(ordered, q) * 1000, 4) for q in quantiles}
    result["max"] = round(ordered[-1] * 1000, 4)
    result["mean"] = round(sum(ordered) / len(ordered) * 1000, 4)
    result["count"] = len(ordered)
    return result


def spread(values: Iterable[float], digits: int | None = None) -> dict[str, float]:
    """How a figure varied over rounds: its median, p10 and p90, min and max (rounded to `digits` when given)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("a spread needs at least one value")
    result = {
        "median": _at(ordered, 50),
        "p10": _at(ordered, 10),
        "p90": _at(ordered, 90),
        "min": ordered[0],
        "max": ordered[-1],
    }
    return result if digits is None else {key: round(value, digits) for key, value in result.items()}
