"""Browser-side TTFT and TTFA through the WebSocket edge beside a gRPC client, on one server, in alternating blocks.

Every client runs the same turn on a session of its own: StartGenerate (8 tokens) and a StartSynthesize speaking it
(`text_from_request_id`); TTFT is the time from sending to the first token, TTFA to the first audio chunk.

- grpc: the generated stubs over grpc.aio (the Session RPC), the reference;
- websocket: the `websockets` client on the edge, binary protobuf: what the edge itself adds;
- browser: the demo page in Debian's Chromium (client_sdk/ts/dist/e2e/page.js, scenario `bench`), measured by
  the page from its Send handler: what a person's browser sees (the edge plus the browser's own work).

The issue's target: the edge adds at most 5 ms at p50 (websocket and browser p50 minus grpc p50). The figures
depend on the machine: results are written only with --record, and only a quiet machine's are worth recording.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from websockets.asyncio.client import connect

from rillet.bench.results import RESULTS, ROOT
from rillet.bench.stats import percentile
from rillet.v1 import generation_pb2, inference_service_pb2_grpc, speech_pb2
from rillet.v1 import inference_service_pb2 as pb

DRIVER = ROOT / "client_sdk" / "ts" / "dist" / "e2e" / "page.js"
PROMPT = "The river ran past the old mill, and"
CLIENTS = ("grpc", "websocket", "browser")

Turn = dict[str, float | None]


def turn_requests(n: int) -> list[pb.SessionRequest]:
    """The turn the page makes: a generation (its prompt, 8 tokens) and a synthesis speaking it."""
    params = generation_pb2.GenerateParams(text=PROMPT, max_tokens=8)
    speak = pb.StartSynthesize(text_from_request_id=f"g{n}", params=speech_pb2.SynthesizeParams())
    return [
        pb.SessionRequest(request_id=f"g{n}", start_generate=pb.StartGenerate(params=params)),
        pb.SessionRequest(request_id=f"sg{n}", start_synthesize=speak),
    ]


class Timer:
    """First token and first audio of one turn, and whether both requests have ended."""

    def __init__(self) -> None:
        self.sent = time.perf_counter()
        self.first: dict[str, float] = {}
        self.ended: set[str] = set()

    def hear(self, response: pb.SessionResponse) -> bool:
        """True once both requests of the turn have their terminal message."""
        kind = response.WhichOneof("kind")
        if kind in ("token_delta", "audio_chunk"):
            self.first.setdefault(kind, time.perf_counter())
        elif kind in ("finished", "error"):
            self.ended.add(response.request_id)
        return len(self.ended) == 2

    def turn(self) -> Turn:
        ms = {k: (v - self.sent) * 1000 for k, v in self.first.items()}
        return {"ttft_ms": ms.get("token_delta"), "ttfa_ms": ms.get("audio_chunk")}


async def grpc_turns(target: str, rounds: int) -> list[Turn]:
    turns: list[Turn] = []
    async with grpc.aio.insecure_channel(target) as channel:
        call = inference_service_pb2_grpc.InferenceServiceStub(channel).Session()
        for n in range(rounds):
            timer = Timer()
            for request in turn_requests(n):
                await call.write(request)
            while not timer.hear(await call.read()):  # type: ignore[arg-type]
                pass
            turns.append(timer.turn())
        await call.done_writing()
    return turns


async def websocket_turns(url: str, rounds: int) -> list[Turn]:
    turns: list[Turn] = []
    async with connect(url, subprotocols=["rillet.v1.proto"]) as ws:  # type: ignore[list-item]
        for n in range(rounds):
            timer = Timer()
            for request in turn_requests(n):
                await ws.send(request.SerializeToString())
            while not timer.hear(pb.SessionResponse.FromString(await ws.recv())):  # type: ignore[arg-type]
                pass
            turns.append(timer.turn())
        await ws.send(b"")
    return turns


async def browser_turns(page_url: str, rounds: int, chromium: str) -> list[Turn]:
    process = await asyncio.create_subprocess_exec(
        "node", str(DRIVER), "--url", page_url, "--scenario", "bench", "--rounds", str(rounds), "--chromium", chromium,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    lines = [line for line in stdout.decode().splitlines() if line.startswith("{")]
    if not lines or "turns" not in json.loads(lines[-1]):
        raise RuntimeError(f"the browser driver failed: {stdout.decode()[-2000:]} {stderr.decode()[-2000:]}")
    return [{"ttft_ms": t["ttftMs"], "ttfa_ms": t["ttfaMs"]} for t in json.loads(lines[-1])["turns"]]


@asynccontextmanager
async def serving(engines: str) -> AsyncIterator[tuple[str, str, str]]:
    """A `rillet serve` with the edge and the page on free ports: (gRPC target, edge URL, page URL)."""
    args = ["--port", "0", "--websocket-port", "0", "--page"]
    if engines == "test":
        args += ["--text-engine", "synthetic", "--speech-engine", "piper"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rillet.server.cli", "serve", *args, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    edge = target = ""
    while not target and (line := await process.stderr.readline()):
        if found := re.search(rb"websocket edge on (ws://\S+)", line):
            edge = found.group(1).decode()
        if found := re.search(rb"serving .* on ([\d.]+:\d+)", line):
            target = found.group(1).decode()
    if not target:
        raise RuntimeError("the server did not start")
    drain = asyncio.create_task(process.stderr.read())  # its log must not fill the pipe and stall it
    try:
        yield target, edge, edge.replace("ws://", "http://").split("/rillet.v1")[0] + "/"
    finally:
        process.terminate()
        await process.wait()
        drain.cancel()


def summary(turns: list[Turn], key: str) -> dict[str, float] | None:
    values = sorted(v for t in turns if (v := t[key]) is not None)
    if not values:
        return None
    return {f"p{q}": round(percentile(values, q), 2) for q in (50, 90, 99)} | {"count": len(values)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    chromium = shutil.which("chromium")
    if chromium is None or not DRIVER.exists():
        raise SystemExit("needs Debian's chromium (make browser-deps) and the driver (make test-sdks)")
    collected: dict[str, list[Turn]] = {client: [] for client in CLIENTS}
    load_before = os.getloadavg()
    async with serving(args.engines) as (target, edge, page):
        for client in CLIENTS:  # warm every path once, unmeasured
            await measure(client, target, edge, page, 2, chromium)
        for block in range(args.blocks):
            order = CLIENTS if block % 2 == 0 else tuple(reversed(CLIENTS))
            for client in order:
                collected[client] += await measure(client, target, edge, page, args.rounds, chromium)
    result: dict[str, Any] = {
        "about": __doc__.splitlines()[0] if __doc__ else "",
        "engines": args.engines,
        "blocks": args.blocks,
        "rounds_per_block": args.rounds,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "clients": {
            c: {"ttft_ms": summary(t, "ttft_ms"), "ttfa_ms": summary(t, "ttfa_ms")} for c, t in collected.items()
        },
    }
    reference = result["clients"]["grpc"]
    result["added_p50_ms"] = {
        client: {key: round(result["clients"][client][key]["p50"] - reference[key]["p50"], 2)
                 for key in ("ttft_ms", "ttfa_ms") if result["clients"][client][key] and reference[key]}
        for client in ("websocket", "browser")
    }  # fmt: skip
    return result


async def measure(client: str, target: str, edge: str, page: str, rounds: int, chromium: str) -> list[Turn]:
    if client == "grpc":
        return await grpc_turns(target, rounds)
    if client == "websocket":
        return await websocket_turns(edge, rounds)
    return await browser_turns(page, rounds, chromium)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", choices=("test", "real"), default="test",
                        help="test: synthetic text + piper; real: make run's defaults (llamacpp + piper)")  # fmt: skip
    parser.add_argument("--blocks", type=int, default=6, help="alternating blocks (client order reversed each)")
    parser.add_argument("--rounds", type=int, default=10, help="turns per client per block")
    parser.add_argument("--record", action="store_true", help="write bench/results/browser_latency_<time>.json")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    if args.record:
        path = RESULTS / f"browser_latency_{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
