"""The `rillet bench` command (the `rillet` CLI registers it): flags → a Plan and levels, the run, what it leaves."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True)
Target = Annotated[str, typer.Option("--target", "-t", envvar="RILLET_TARGET", help="server address host:port")]
DEFAULT_CONCURRENCY = (1, 4, 16, 64)
DEFAULT_REQUESTS = 200


def concurrency_levels(concurrency: str | None, rates: list[float] | None) -> list[int]:
    """The closed-loop levels: those given (comma-separated), else the default sweep unless rates are given."""
    if concurrency:
        try:
            levels = [int(c) for c in concurrency.split(",")]
        except ValueError:
            raise ValueError(f"--concurrency takes whole numbers separated by commas, not {concurrency!r}") from None
    else:
        levels = [] if rates else list(DEFAULT_CONCURRENCY)
    if any(c < 1 for c in levels):
        raise ValueError("concurrency levels must be at least 1")
    return levels


def bench(
    target: Target = "127.0.0.1:50051",
    workload: Annotated[str, typer.Option(help="text, speech, or chain (a generation spoken as it streams)")] = "text",
    rpc: Annotated[
        str | None,
        typer.Option(help="oneshot (Generate/Synthesize calls) or session (bidi Session calls; chain's default)"),
    ] = None,
    concurrency: Annotated[
        str | None, typer.Option(help="closed-loop sweep, e.g. 1,4,16,64 (default when no --rate is given)")
    ] = None,
    rate: Annotated[
        list[float] | None, typer.Option(help="open loop: Poisson arrivals per second (repeatable)")
    ] = None,
    requests: Annotated[int | None, typer.Option(help="requests per level (default 200 unless --duration)")] = None,
    duration: Annotated[float | None, typer.Option(help="seconds per level")] = None,
    max_tokens: Annotated[int, typer.Option(help="tokens per generation")] = 64,
    model: Annotated[str, typer.Option(help="model name; empty for the server's default")] = "",
    voice: Annotated[str, typer.Option(help="voice name; empty for the server's default")] = "",
    prompts: Annotated[Path | None, typer.Option(help="prompt file, one per line (default: built-in prompts)")] = None,
    shared_prefix: Annotated[int, typer.Option(help="words of a system prefix every prompt shares")] = 0,
    connections: Annotated[int, typer.Option(help="gRPC connections; users are spread over them in turn")] = 1,
    warmup: Annotated[int, typer.Option(help="requests sent (and not counted) before the first level")] = 8,
    timeout: Annotated[float, typer.Option(help="deadline of each request in seconds")] = 120.0,
    output: Annotated[
        Path | None, typer.Option(help="JSON results (default bench-results/rillet-bench-TIME.json)")
    ] = None,
    plot: Annotated[bool, typer.Option(help="also write a PNG beside the JSON (needs matplotlib: the bench extra)")] = (
        True
    ),
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Load-test a Rillet server: latency percentiles, throughput, errors; every stream is verified."""
    from rillet.bench.loadgen import sweep
    from rillet.bench.loadgen.report import plot as write_plot
    from rillet.bench.loadgen.report import show, write_json
    from rillet.bench.loadgen.runner import Bound
    from rillet.bench.loadgen.workload import Plan, Rpc, Workload, load_prompts
    from rillet.client import GenerateOptions, SynthesizeOptions

    try:
        levels = concurrency_levels(concurrency, rate)
        kind = Workload(workload)
        plan = Plan(
            workload=kind,
            rpc=kind.rpc_for(None if rpc is None else Rpc(rpc)),
            prompts=load_prompts(prompts),
            prefix_words=shared_prefix,
            generate=GenerateOptions(model=model, max_tokens=max_tokens, timeout=timeout),
            synthesize=SynthesizeOptions(voice=voice, timeout=timeout),
        )
        bound = Bound(requests if requests is not None or duration is not None else DEFAULT_REQUESTS, duration)
    except (ValueError, OSError) as error:
        err.print(f"[red]invalid benchmark:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(2) from None
    console = Console(stderr=True) if progress else None
    try:
        results = asyncio.run(
            sweep.run(
                target,
                plan,
                concurrency=levels,
                rates=rate or (),
                bound=bound,
                connections=connections,
                warmup=warmup,
                console=console,
            )
        )
    except Exception as error:  # grpc errors reaching the server, ListModels failing: say what and stop
        err.print(f"[red]benchmark failed:[/red] {escape(repr(error))}", highlight=False)
        raise typer.Exit(1) from None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = output or Path("bench-results") / f"rillet-bench-{stamp}.json"
    write_json(results, path)
    show(results, Console())
    err.print(f"results: {path}")
    if plot:
        png = path.with_suffix(".png")
        if write_plot(results, png):
            err.print(f"plot: {png}")
        else:
            err.print("[yellow]no plot: matplotlib is not installed (pip install 'rillet[bench]')[/yellow]")
    if any(level["lost"] for level in results["levels"]):
        err.print("[red]streams were lost (seq gap, missing terminal message, or counts that disagree)[/red]")
        raise typer.Exit(1)
