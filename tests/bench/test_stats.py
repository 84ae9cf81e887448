"""The one percentile definition: the stdlib's inclusive quantiles and median, the Go client's cases, the summaries."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from rillet.bench.stats import distribution_ms, median, percentile, spread

GO_CASES = [  # the same table as client_sdk/go/internal/streamload/percentile_test.go
    ([7.0], 99, 7.0),
    ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
    ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
    ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
    ([1.0, 2.0, 3.0, 4.0], 90, 3.7),
    ([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0], 99, 99.1),
    ([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0], 10, 19.0),
]


@pytest.mark.parametrize(("samples", "q", "expected"), GO_CASES)
def test_the_cases_the_go_client_is_held_to(samples: list[float], q: float, expected: float) -> None:
    assert percentile(samples, q) == pytest.approx(expected)


@pytest.mark.parametrize("n", [2, 3, 10, 101, 400])
def test_it_is_the_stdlib_inclusive_quantile_and_median(n: int) -> None:
    rng = random.Random(n)
    samples = [rng.lognormvariate(0, 1) for _ in range(n)]
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    for q in range(1, 100):
        assert percentile(samples, q) == pytest.approx(cuts[q - 1])
    assert median(samples) == pytest.approx(statistics.median(samples))
    assert percentile(samples, 0) == min(samples)
    assert percentile(samples, 100) == max(samples)


def test_order_does_not_matter_and_few_samples_put_p99_below_the_largest() -> None:
    assert percentile([5.0, 1.0, 3.0], 50) == 3.0
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)  # nearest-rank definitions would say 2


def test_no_samples_and_bad_quantiles() -> None:
    assert math.isnan(percentile([], 50))
    assert math.isnan(median([]))
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], 101)
    with pytest.raises(ValueError, match="at least one"):
        spread([])


def test_a_distribution_in_milliseconds() -> None:
    assert distribution_ms([]) is None
    assert distribution_ms([0.004, 0.001, 0.002, 0.003]) == {
        "p50": 2.5,
        "p90": 3.7,
        "p99": 3.97,
        "max": 4.0,
        "mean": 2.5,
        "count": 4,
    }


def test_a_spread_over_rounds() -> None:
    values = [1.12345, 1.5, 0.9, 1.3, 1.1]
    assert spread(values) == {
        "median": 1.12345,
        "p10": pytest.approx(0.98),
        "p90": pytest.approx(1.42),
        "min": 0.9,
        "max": 1.5,
    }
    assert spread(values, 2)["median"] == 1.12
