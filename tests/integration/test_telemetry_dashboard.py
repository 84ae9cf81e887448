"""Every metric the Grafana dashboard (deploy/observability) queries is one the running `rillet serve` exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rillet.client import Client, NotFoundError
from tests.integration.test_telemetry import scrape, serve

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "observability" / "grafana" / "dashboards" / "rillet.json"
PROMQL_WORDS = frozenset(
    {"sum", "by", "without", "rate", "irate", "increase", "histogram_quantile", "avg", "max", "min", "le"}
)


def queried_metrics(dashboard: dict[str, object]) -> set[str]:
    """The metric names in every panel's PromQL (label matchers, grouping labels, ranges and numbers removed)."""
    names: set[str] = set()
    for panel in dashboard["panels"]:  # type: ignore[attr-defined]
        for target in panel["targets"]:
            expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\b(?:by|without)\s*\([^)]*\)", " ", target["expr"])
            names |= {word for word in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr) if word not in PROMQL_WORDS}
    return names


def test_the_extraction_finds_names_and_only_names() -> None:
    expr = 'histogram_quantile(0.9, sum by (le, model) (rate(a_seconds_bucket{x="y"}[$__rate_interval]))) / b_total'
    assert queried_metrics({"panels": [{"targets": [{"expr": expr}]}]}) == {"a_seconds_bucket", "b_total"}


@pytest.mark.voice
@pytest.mark.timeout(120)
async def test_every_dashboard_metric_is_exported_by_the_running_server() -> None:
    wanted = queried_metrics(json.loads(DASHBOARD.read_text()))
    assert len(wanted) >= 15
    async with serve("--speech-engine", "piper") as served:
        async with Client.connect(f"127.0.0.1:{served.port}") as client, client.session() as session:
            # Every kind of event the dashboard shows: text, speech, a queue, an error, a rejected message.
            generation = await session.generate("the dashboard", max_tokens=8)
            speech = await session.synthesize("Hello there.")
            await generation.collect()
            await speech.collect()
            with pytest.raises(NotFoundError):
                await (await session.generate("x", model="no-such-model")).collect()
            await session.cancel("no-such-request")  # answered with `rejected`
            await session.close()
        families = scrape(served.prometheus_port)
    exported = {sample.name for family in families.values() for sample in family.samples}
    assert wanted - exported == set()
