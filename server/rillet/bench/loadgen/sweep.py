"""One `rillet bench` run: warm up, run each load level with a progress bar, collect the results."""

from __future__ import annotations

import dataclasses
import datetime
import platform
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rillet.bench.loadgen.calls import oneshot
from rillet.bench.loadgen.runner import Bound, Connections, closed_loop, levels, open_loop
from rillet.bench.loadgen.workload import Plan, Rpc, Workload
from rillet.v1 import inference_service_pb2

FORMAT_VERSION = 2
"""2: a level's errors are grouped by code and reason, each with a sample message, and counted in `failed`."""


async def server_models(connections: Connections) -> list[dict[str, Any]]:
    """What the server says it serves (test engines are flagged in the results)."""
    response = await connections.stub().ListModels(inference_service_pb2.ListModelsRequest(), timeout=10.0)
    return [
        {"name": m.name, "engine": m.engine, "is_test_engine": m.is_test_engine, "is_default": m.is_default}
        for m in response.models
    ]


async def run(
    target: str,
    plan: Plan,
    *,
    concurrency: Sequence[int] = (),
    rates: Sequence[float] = (),
    bound: Bound,
    connections: int = 1,
    warmup: int = 0,
    console: Console | None = None,
) -> dict[str, Any]:
    """Every level of the sweep against `target`; a progress bar on `console` when given."""
    if not concurrency and not rates:
        raise ValueError("give at least one concurrency or arrival rate")
    pool = Connections(target, connections)
    try:
        await pool.ready()
        models = await server_models(pool)
        warm = dataclasses.replace(plan, rpc=Rpc.ONESHOT) if plan.workload is not Workload.CHAIN else plan
        if warm.workload is not Workload.CHAIN:
            texts = warm.texts()
            for _ in range(warmup):
                await oneshot(pool.stub(), warm, next(texts))
        results: dict[str, Any] = {
            "tool": "rillet bench",
            "format_version": FORMAT_VERSION,
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "target": target,
            "client_host": {"python": platform.python_version(), "machine": platform.machine()},
            "server_models": models,
            "plan": {
                "workload": plan.workload.value,
                "rpc": plan.rpc.value,
                "max_tokens": plan.generate.max_tokens,
                "model": plan.generate.model,
                "voice": plan.synthesize.voice,
                "prompts": len(plan.prompts),
                "prefix_words": plan.prefix_words,
                "timeout_s": plan.generate.timeout,
            },
            "bound": {"requests": bound.requests, "duration_s": bound.duration_s},
            "connections": connections,
            "warmup": warmup,
            "levels": [],
        }
        with _progress(console) as progress:
            for kind, value in levels(concurrency, rates):
                label = f"c={value:g}" if kind == "concurrency" else f"{value:g}/s"
                task = progress.add_task(label, total=bound.requests)
                advance = lambda n, task=task: progress.advance(task, n)  # noqa: E731
                if kind == "concurrency":
                    summary = await closed_loop(pool, plan, int(value), bound, advance)
                else:
                    summary = await open_loop(pool, plan, value, bound, advance)
                progress.update(task, total=summary["requests"], completed=summary["requests"])
                results["levels"].append(summary)
        return results
    finally:
        await pool.aclose()


def _progress(console: Console | None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=console is None,
        transient=False,
    )
