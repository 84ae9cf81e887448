"""The `rillet` command: serve, generate, speak, models, health, bench."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import wave
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rillet.bench.loadgen.cli import bench
from rillet.server.config import LogFormat, Settings, SpeechEngineKind, TextEngineKind
from rillet.server.errors import ConfigurationError, EngineDead
from rillet.server.telemetry.logs import configure_logging
from rillet.server.telemetry.plan import Exports
from rillet.server.telemetry.plan import exports as telemetry_exports

if TYPE_CHECKING:
    from rillet.client import ChannelConfig

app = typer.Typer(help="Rillet: streaming inference over gRPC.", no_args_is_help=True, add_completion=False)
err = Console(stderr=True)

Target = Annotated[str, typer.Option("--target", "-t", envvar="RILLET_TARGET", help="server address host:port")]


def _settings(overrides: dict[str, Any]) -> Settings:
    """Flags override RILLET_* variables, which override defaults. Built once, here."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        err.print(f"[red]invalid configuration:[/red]\n{error}")
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="address to bind [RILLET_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="port to bind, 0 for any [RILLET_PORT]")] = None,
    text_engine: Annotated[TextEngineKind | None, typer.Option(help="text backend [RILLET_TEXT_ENGINE]")] = None,
    speech_engine: Annotated[
        SpeechEngineKind | None, typer.Option(help="speech backend [RILLET_SPEECH_ENGINE]")
    ] = None,
    drain_grace_s: Annotated[float | None, typer.Option(help="grace for in-flight requests on SIGTERM")] = None,
    log_level: Annotated[str | None, typer.Option(help="logging level [RILLET_LOG_LEVEL]")] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="TLS certificate chain, PEM [RILLET_SECURITY__TLS__CERT_FILE]")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key, PEM [RILLET_SECURITY__TLS__KEY_FILE]")] = None,
    tls_client_ca: Annotated[
        Path | None, typer.Option(help="require client certificates from this CA: mTLS [..._TLS__CLIENT_CA_FILE]")
    ] = None,
    tenants_file: Annotated[
        Path | None, typer.Option(help="TOML file: per tenant, its tokens and limits [RILLET_SECURITY__TENANTS_FILE]")
    ] = None,
    reflection: Annotated[bool | None, typer.Option(help="serve gRPC reflection [RILLET_SECURITY__REFLECTION]")] = None,
    max_connections: Annotated[int | None, typer.Option(help="connections at once [..._MAX_CONNECTIONS]")] = None,
    max_calls: Annotated[int | None, typer.Option(help="sessions and streams at once [..._MAX_CALLS]")] = None,
    otlp_endpoint: Annotated[
        str | None,
        typer.Option(help="export traces and metrics over OTLP/gRPC here, e.g. http://127.0.0.1:4317 (or OTEL_*)"),
    ] = None,
    prometheus_port: Annotated[
        int | None, typer.Option(help="serve Prometheus /metrics on this port [RILLET_TELEMETRY__PROMETHEUS_PORT]")
    ] = None,
    prometheus_host: Annotated[str | None, typer.Option(help="address of the Prometheus endpoint")] = None,
    log_format: Annotated[LogFormat | None, typer.Option(help="text or json [RILLET_TELEMETRY__LOG_FORMAT]")] = None,
    capture_content: Annotated[
        bool | None, typer.Option(help="put prompt and output text on request spans (personal data!)")
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="server processes sharing the port (SO_REUSEPORT), each with its own engines")
    ] = 1,
    websocket_port: Annotated[
        int | None, typer.Option(help="also serve sessions over WebSocket on this port [RILLET_WEBSOCKET__PORT]")
    ] = None,
    page: Annotated[
        bool | None, typer.Option(help="serve the demo page on the WebSocket port [RILLET_WEBSOCKET__PAGE]")
    ] = None,
    allowed_origin: Annotated[
        list[str] | None,
        typer.Option(help="browser origin allowed on the WebSocket edge, repeatable [..._ALLOWED_ORIGINS]"),
    ] = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain. Telemetry: see README "Observability"."""
    tls = {"cert_file": tls_cert, "key_file": tls_key, "client_ca_file": tls_client_ca}
    security = {
        "tls": {k: v for k, v in tls.items() if v is not None} or None,
        "tenants_file": tenants_file,
        "reflection": reflection,
        "max_connections": max_connections,
        "max_calls": max_calls,
    }
    telemetry = {
        "otlp_endpoint": otlp_endpoint,
        "prometheus_port": prometheus_port,
        "prometheus_host": prometheus_host,
        "log_format": log_format,
        "capture_content": capture_content,
    }
    websocket = {
        "enabled": True if websocket_port is not None or page else None,
        "port": websocket_port,
        "page": page,
        "allowed_origins": allowed_origin,
    }
    settings = _settings(
        {
            "websocket": {k: v for k, v in websocket.items() if v is not None} or None,
            "host": host,
            "port": port,
            "text_engine": text_engine,
            "speech_engine": speech_engine,
            "drain_grace_s": drain_grace_s,
            "log_level": log_level,
            "security": {k: v for k, v in security.items() if v is not None} or None,
            "telemetry": {k: v for k, v in telemetry.items() if v is not None} or None,
        }
    )
    from rillet.server.transport.auth import load_tenants

    try:
        load_tenants(settings.security)  # a bad tenants file fails here, before anything starts
    except ValueError as error:
        err.print(f"[red]invalid tenants:[/red] {error}")
        raise typer.Exit(2) from None
    exports = telemetry_exports(settings.telemetry, os.environ)  # the one place the OTEL_* switches are read
    if workers > 1:
        _serve_workers(settings, workers)
    configure_logging(settings.log_level, settings.telemetry.log_format, trace_ids=exports.otlp_traces)
    if settings.text_engine is TextEngineKind.SYNTHETIC:
        err.print("[yellow]text engine: SYNTHETIC TEST ENGINE — deterministic words, not a language model[/yellow]")
    from rillet.server.app import loop_factory  # heavy imports after logging is configured

    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            status = runner.run(_serve(settings, exports))
    except ConfigurationError as error:  # a setting, or what one names, is wrong: as invalid settings, status 2
        err.print(f"[red]invalid configuration:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(2) from None
    except EngineDead as error:  # an engine that cannot run here (no package, GPU or model): its message says why
        err.print(f"[red]cannot serve:[/red] {escape(error.message)}", highlight=False)
        raise typer.Exit(1) from None
    if status:
        raise typer.Exit(status)


def _serve_workers(settings: Settings, workers: int) -> None:
    """Run `workers` copies of this very command, one process each, on one port; exits with the group's status."""
    from rillet.server.workers import supervise

    if settings.port == 0:
        err.print("[red]--workers needs a fixed --port: with port 0 each process would pick its own[/red]")
        raise typer.Exit(2)
    if settings.telemetry.prometheus_port is not None:
        err.print("[red]--workers with a Prometheus port: every process would bind it; export over OTLP instead[/red]")
        raise typer.Exit(2)
    configure_logging(settings.log_level, settings.telemetry.log_format, trace_ids=False)
    command = [sys.executable, "-m", "rillet.server.cli", *sys.argv[1:], "--workers", "1"]  # the last --workers wins
    raise typer.Exit(supervise(command, workers, {**os.environ, "RILLET_REUSE_PORT": "true"}))


async def _serve(settings: Settings, exports: Exports) -> int:
    """Run the server, with telemetry wired in when any export is on (and nothing of it otherwise)."""
    from rillet.server.app import RilletServer  # heavy imports after logging is configured
    from rillet.server.app import serve as run_server

    if not exports.enabled:
        return await run_server(settings)
    from rillet.server.telemetry.edge import EdgeTelemetry
    from rillet.server.telemetry.runtime import Telemetry

    telemetry = Telemetry(settings.telemetry, exports, host=settings.host, port=settings.port)
    try:
        edge = EdgeTelemetry(telemetry.rpc.tracer, telemetry.instruments.meter)
        server = RilletServer(settings, observer=telemetry.observer, guards=[telemetry.rpc], edge_observer=edge)
        telemetry.watch(server.router.engines)
        telemetry.watch_load(server.load.gauges)
        return await run_server(settings, server)
    finally:
        telemetry.shutdown()  # after the drain: the last spans and metrics are exported


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="completion prompt")],
    target: Target = "127.0.0.1:50051",
    model: Annotated[str, typer.Option(help="model name; empty for the server's default")] = "",
    max_tokens: Annotated[int | None, typer.Option(help="tokens to generate")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 for greedy")] = None,
    top_p: Annotated[float | None, typer.Option()] = None,
    top_k: Annotated[int | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    stop: Annotated[list[str] | None, typer.Option(help="stop string (repeatable)")] = None,
    timeout: Annotated[float | None, typer.Option(help="deadline in seconds")] = None,
) -> None:
    """Stream a completion to the terminal, then print TTFT and tokens/s."""
    from rillet.client import Client, Finished, GenerateOptions, RilletError

    options = GenerateOptions(
        model=model,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stop=stop or (),
        timeout=timeout,
    )

    async def run() -> None:
        async with Client.connect(target) as client:
            started = time.perf_counter()
            first: float | None = None
            tokens = 0
            stream = client.generate(prompt, options)
            sys.stdout.write(prompt)
            async for event in stream:
                if isinstance(event, Finished):
                    elapsed = time.perf_counter() - started
                    ttft = first - started if first is not None else elapsed
                    decode = elapsed - ttft
                    rate = (tokens - 1) / decode if tokens > 1 and decode > 0 else 0.0
                    sys.stdout.write("\n")
                    err.print(
                        f"[dim]{event.reason.value} · {tokens} tokens · TTFT {ttft * 1000:.0f} ms · "
                        f"{rate:.1f} tok/s · server queue {event.timings.queue_s * 1000:.1f} ms[/dim]"
                    )
                    return
                if first is None:
                    first = time.perf_counter()
                tokens += len(event.token_ids)
                sys.stdout.write(event.text)
                sys.stdout.flush()

    try:
        asyncio.run(run())
    except RilletError as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None


@app.command()
def speak(
    text: Annotated[str, typer.Argument(help="text to speak, or the prompt with --from-generate")],
    output: Annotated[Path, typer.Option("--output", "-o", help="WAV file to write")] = Path("out.wav"),
    from_generate: Annotated[
        bool, typer.Option("--from-generate", help="generate from TEXT and speak the tokens as they arrive")
    ] = False,
    target: Target = "127.0.0.1:50051",
    voice: Annotated[str, typer.Option(help="voice name; empty for the server's default")] = "",
    max_tokens: Annotated[int, typer.Option(help="tokens to generate with --from-generate")] = 48,
    timeout: Annotated[float | None, typer.Option(help="deadline in seconds")] = None,
) -> None:
    """Synthesize speech into a WAV file and print the time to first audio (TTFA)."""
    from rillet.client import (
        AudioChunk,
        Client,
        GenerateOptions,
        RilletError,
        SynthesizeOptions,
        SynthesizeStream,
        TokenDelta,
    )

    speech = SynthesizeOptions(voice=voice)

    async def write(stream: SynthesizeStream, started: float) -> None:
        first: float | None = None
        with wave.open(str(output), "wb") as wav:
            async for event in stream:
                if isinstance(event, AudioChunk):
                    if first is None:
                        first = time.perf_counter() - started
                        wav.setnchannels(event.channel_count)
                        wav.setsampwidth(2)
                        wav.setframerate(event.sample_rate_hertz)
                    wav.writeframes(event.audio)
                else:
                    audio_s = event.usage.output_audio_s
                    elapsed = time.perf_counter() - started
                    err.print(
                        f"[dim]{output}: {audio_s:.2f}s of audio · TTFA {(first or elapsed) * 1000:.0f} ms · "
                        f"real-time factor {elapsed / audio_s if audio_s else 0:.3f}[/dim]"
                    )

    async def run() -> None:
        async with Client.connect(target) as client:
            started = time.perf_counter()
            if not from_generate:
                await write(client.synthesize(text, speech, timeout=timeout), started)
                return
            async with client.session(timeout=timeout) as session:  # the deadline of the generation and its speech
                generation = await session.generate(text, GenerateOptions(max_tokens=max_tokens))
                spoken = await session.synthesize(options=speech, text_from=generation)
                writer = asyncio.create_task(write(spoken, started))
                sys.stdout.write(text)
                async for event in generation:
                    if isinstance(event, TokenDelta):
                        sys.stdout.write(event.text)
                        sys.stdout.flush()
                sys.stdout.write("\n")
                await writer

    try:
        asyncio.run(run())
    except RilletError as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None


@app.command()
def models(target: Target = "127.0.0.1:50051") -> None:
    """List the models and voices a server serves."""
    from rillet.client import Client, RilletError

    async def run() -> None:
        async with Client.connect(target) as client:
            listed = await client.list_models()
        table = Table("name", "kind", "engine", "default", "limits")
        for m in listed:
            limits = f"{m.context_length} tokens" if m.context_length else f"{m.sample_rate_hertz} Hz"
            kind = m.kind.value.replace("_", " ") + (" [yellow](TEST ENGINE)[/yellow]" if m.is_test_engine else "")
            table.add_row(m.name, kind, m.engine, "✓" if m.is_default else "", limits)
        console = Console()
        console.print(table)
        for m in listed:
            console.print(f"[bold]{m.name}[/bold]: {m.description}", highlight=False)

    try:
        asyncio.run(run())
    except RilletError as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None


app.command()(bench)  # `rillet bench`: the load generator, a client tool of its own package (rillet.bench)


@app.command()
def health(
    target: Target = "127.0.0.1:50051",
    wait: Annotated[float, typer.Option(help="seconds to wait for SERVING; 0 checks once")] = 0.0,
    service: Annotated[str, typer.Option(help="the health service name; empty: the server as a whole")] = "",
    tls_ca: Annotated[Path | None, typer.Option(help="connect with TLS, trusting this CA bundle (PEM)")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="client certificate for mutual TLS (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="client private key for mutual TLS (PEM)")] = None,
    tls_server_name: Annotated[
        str | None, typer.Option(help="the name the server's certificate carries, when not the target's host")
    ] = None,
) -> None:
    """Exit 0 when the server reports SERVING (grpc.health.v1), 1 otherwise: a container or probe health check."""
    from rillet.client import ChannelConfig, TlsOptions

    if (tls_cert is None) != (tls_key is None):
        err.print("[red]mutual TLS needs both --tls-cert and --tls-key[/red]")
        raise typer.Exit(2)
    tls = None
    if tls_ca is not None or tls_cert is not None:
        tls = TlsOptions(ca_file=tls_ca, cert_file=tls_cert, key_file=tls_key, server_name=tls_server_name)
    try:
        config = ChannelConfig(target, tls=tls)
    except ValueError as error:
        err.print(f"[red]{escape(str(error))}[/red]", highlight=False)
        raise typer.Exit(2) from None
    if not asyncio.run(_serving(config, service, wait)):
        err.print(f"[red]{target} is not serving[/red]")
        raise typer.Exit(1)


HEALTH_ANSWER_S = 2.0
"""How long `rillet health` waits for a first answer when it does not wait for SERVING (--wait 0)."""


async def _serving(config: ChannelConfig, service: str, wait: float) -> bool:
    """Whether `service` reports SERVING within `wait` seconds: one Health.Watch, whose server pushes each change.

    With `wait`, the watch waits for the connection (a server still starting) and is opened again if it breaks (a
    server restarting), until the deadline; without, the first answer decides.
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    loop = asyncio.get_running_loop()
    deadline = loop.time() + (wait or HEALTH_ANSWER_S)
    request = health_pb2.HealthCheckRequest(service=service)
    async with config.open() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while (left := deadline - loop.time()) > 0:
            try:
                async for response in stub.Watch(request, timeout=left, wait_for_ready=wait > 0):
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return True
                    if not wait:
                        return False
            except grpc.aio.AioRpcError as error:
                if not wait or error.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                    return False
            await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))  # before watching again
    return False


def main() -> None:
    app()


if __name__ == "__main__":
    main()
