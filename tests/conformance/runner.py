"""The Python conformance runner: plays scenarios.json through the rillet.client SDK against a live server."""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import os
import re
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rillet.client import AudioChunk, ChatMessage, Client, Finished, Priority, RilletError, Session, TokenDelta
from rillet.server.transport import orca  # the ORCA messages, from the vendored cncf/xds protos

SERVICE = "rillet.v1.InferenceService"
WAIT_S = 30.0  # a bound on every wait: a scenario that would hang fails instead
CONTROL_OPS = frozenset({"server_info", "tokenize", "count_tokens", "detokenize", "abort", "load", "orca"})


class Failed(Exception):
    """A scenario's expectation did not hold."""


@dataclass
class Tracked:
    """What one session request received: its outputs, then its terminal (a Finished or a RilletError)."""

    outputs: list[TokenDelta | AudioChunk] = field(default_factory=list)
    first_output: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[Finished | RilletError] | None = None


def name_of(value: enum.Enum, prefix: str) -> str:
    return prefix + value.name


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def check_audio(request: str, outputs: list[Any]) -> None:
    """Audio chunks are contiguous: each starts at the sample where the previous one ended."""
    expected = 0
    for chunk in outputs:
        check(isinstance(chunk, AudioChunk), f"{request}: a {type(chunk).__name__} in a synthesis")
        check(chunk.offset_samples == expected, f"{request}: offset {chunk.offset_samples}, expected {expected}")
        expected += chunk.samples


def check_outputs(step: dict[str, Any], outputs: list[Any]) -> None:
    """Counts: tokens in the deltas (the server may coalesce deltas for a slow reader, never drop or add tokens)."""
    if "tokens" in step:
        tokens = sum(len(o.token_ids) for o in outputs if isinstance(o, TokenDelta))
        check(tokens == step["tokens"], f"{tokens} tokens, expected {step['tokens']}")
    if "min_outputs" in step:
        check(len(outputs) >= step["min_outputs"], f"{len(outputs)} outputs, expected ≥ {step['min_outputs']}")
    text = "".join(o.text for o in outputs if isinstance(o, TokenDelta))
    if "matches" in step:
        check(re.fullmatch(step["matches"], text) is not None, f"text {text!r} does not match {step['matches']}")
    if step.get("json"):
        try:
            json.loads(text)
        except ValueError as error:
            raise Failed(f"text {text!r} is not JSON: {error}") from None


def constraint(step: dict[str, Any]) -> dict[str, Any]:
    """The step's output constraint as GenerateOptions keywords (`json_schema` goes as the dict it is)."""
    return dict(step.get("constraint", {}))


def check_error(step: dict[str, Any], error: RilletError) -> None:
    check(error.code.name == step["code"], f"code {error.code.name}, expected {step['code']} ({error})")
    if "reason" in step:
        check(error.reason == step["reason"], f"reason {error.reason!r}, expected {step['reason']!r}")
    # The Python SDK does not expose ErrorInfo.domain; the Go and TypeScript runners check it.


class Runner:
    """Plays one scenario; a session is opened by its first session step."""

    def __init__(self, client: Client, target: str, server_pid: int) -> None:
        self.client = client
        self.target = target
        self.server_pid = server_pid
        self.session: Session | None = None
        self.requests: dict[str, Tracked] = {}
        self.streams: dict[str, Any] = {}
        self.closing: asyncio.Task[RilletError | None] | None = None

    def open(self) -> Session:
        if self.session is None:
            self.session = self.client.session()
        return self.session

    def track(self, request_id: str, stream: Any) -> None:
        tracked = Tracked()
        self.streams[request_id] = stream

        async def collect() -> Finished | RilletError:
            try:
                async for item in stream:
                    if isinstance(item, Finished):
                        return item
                    tracked.outputs.append(item)
                    tracked.first_output.set()
            except RilletError as error:
                return error
            raise Failed(f"{request_id}: the stream ended with no terminal message")

        tracked.task = asyncio.get_running_loop().create_task(collect())
        self.requests[request_id] = tracked

    async def terminal(self, request_id: str) -> tuple[Finished | RilletError, list[Any]]:
        tracked = self.requests[request_id]
        assert tracked.task is not None
        return await asyncio.wait_for(asyncio.shield(tracked.task), WAIT_S), tracked.outputs

    async def close_session(self) -> RilletError | None:
        try:
            await self.open().close()
        except RilletError as error:
            return error
        return None

    async def step(self, step: dict[str, Any]) -> None:
        op = step["op"]
        if op == "generate":
            timeout = step["timeout_ms"] / 1000 if "timeout_ms" in step else None
            priority = Priority(step["priority"]) if "priority" in step else None
            stream = await self.open().generate(
                step["prompt"],
                request_id=step["id"],
                max_tokens=step["max_tokens"],
                timeout=timeout,
                priority=priority,
                **constraint(step),
            )
            self.track(step["id"], stream)
        elif op == "synthesize":
            speech = await self.open().synthesize(
                step.get("text", ""),
                request_id=step["id"],
                streaming_input=step.get("streaming_input", False),
                text_from=step.get("text_from"),
            )
            self.track(step["id"], speech)
        elif op == "append_text":
            await self.streams[step["id"]].append_text(step["text"])
        elif op == "end_input":
            await self.streams[step["id"]].end_input()
        elif op == "cancel":
            await self.open().cancel(step["id"])
        elif op == "interrupt":
            await self.open().cancel(step["id"], played_samples=step["played_samples"])
        elif op == "half_close":
            self.closing = asyncio.get_running_loop().create_task(self.close_session())
        elif op == "await_output":
            await asyncio.wait_for(self.requests[step["id"]].first_output.wait(), WAIT_S)
        elif op == "expect_finished":
            result, outputs = await self.terminal(step["id"])
            check(isinstance(result, Finished), f"{step['id']}: {result}, expected finished")
            assert isinstance(result, Finished)
            check(name_of(result.reason, "FINISH_REASON_") == step["reason"], f"{step['id']}: {result.reason}")
            check_outputs(step, outputs)
            if outputs and isinstance(outputs[0], AudioChunk):
                check_audio(step["id"], outputs)
            await self.check_spoken(step, result)
        elif op == "expect_error":
            result, _ = await self.terminal(step["id"])
            check(isinstance(result, RilletError), f"{step['id']}: {result}, expected an error")
            assert isinstance(result, RilletError)
            check_error(step, result)
        elif op == "expect_rejected":
            rejections = self.open().rejections
            for _ in range(int(WAIT_S / 0.005)):  # the SDK keeps rejections in a deque, with no notification
                if any(r.request_id == step["id"] for r in rejections):
                    break
                await asyncio.sleep(0.005)
            found = [r for r in rejections if r.request_id == step["id"]]
            check(bool(found), f"no rejection for {step['id']!r}")
            check_error(step, found[0])
        elif op == "expect_call_end":
            if self.closing is None:
                self.closing = asyncio.get_running_loop().create_task(self.close_session())
            error = await asyncio.wait_for(self.closing, WAIT_S)
            code = "OK" if error is None else error.code.name
            check(code == step["code"], f"the call ended {code}, expected {step['code']} ({error})")
        elif op == "drain":
            await self.drain()
        elif op == "call_generate":
            deadline = step["deadline_ms"] / 1000 if "deadline_ms" in step else None
            stream = self.client.generate(
                step["prompt"], max_tokens=step["max_tokens"], timeout=deadline, **constraint(step)
            )
            await self.one_shot(step, stream)
        elif op == "call_synthesize":
            await self.one_shot(step, self.client.synthesize(step["text"]))
        elif op == "list_models":
            models = await self.client.list_models()
            for want in step["expect"]:
                check(
                    any(all(model_field(m, k) == v for k, v in want.items()) for m in models),
                    f"no model like {want} in {models}",
                )
        elif op in CONTROL_OPS:
            try:
                await self.control(step)
            except RilletError as error:
                check("code" in step, f"{op}: {error}")
                check_error(step, error)
                return
            check("code" not in step, f"{op} succeeded, expected {step.get('code')}")
        else:
            raise Failed(f"unknown op {op!r}")

    async def check_spoken(self, step: dict[str, Any], finished: Finished) -> None:
        """`spoken_at_most`: it says what was heard, of at most that many samples; `spoken_as`: as another says."""
        spoken = finished.spoken
        if "spoken_at_most" in step:
            check(spoken is not None, f"{step['id']}: no spoken text")
            assert spoken is not None
            check(spoken.played_samples <= step["spoken_at_most"], f"{step['id']}: played {spoken.played_samples}")
            check(len(spoken.text) == spoken.end_char - spoken.start_char, f"{step['id']}: {spoken}")
        if "spoken_as" in step:
            other, _ = await self.terminal(step["spoken_as"])
            check(isinstance(other, Finished) and other.spoken == spoken, f"{step['id']}: {spoken}, not {other}")

    async def control(self, step: dict[str, Any]) -> None:
        """The ControlService steps; a failure raises RilletError for `step` to check."""
        op, client = step["op"], self.client
        prompt = step.get("prompt") or [ChatMessage(role, content) for role, content in step.get("chat", [])]
        if op == "server_info":
            info = await client.server_info()
            engines = {e.name: e for e in info.engines}
            for want in step["engines"]:
                check(want["name"] in engines, f"no engine {want['name']} in {list(engines)}")
                check(engines[want["name"]].tokenizer == want["tokenizer"], f"{want['name']}: tokenizer")
        elif op == "tokenize":
            ids = await client.tokenize(prompt)
            check(list(ids) == step["ids"], f"ids {ids}, expected {step['ids']}")
        elif op == "count_tokens":
            count = await client.count_tokens(prompt)
            check(count.tokens == step["tokens"], f"{count.tokens} tokens, expected {step['tokens']}")
        elif op == "detokenize":
            text = await client.detokenize(step["ids"])
            check(text == step["text"], f"text {text!r}, expected {step['text']!r}")
        elif op == "abort":
            ended = await client.abort(step["target"])
            check(list(ended) == step["ended"], f"ended {ended}, expected {step['ended']}")
        elif op == "load":
            load = await client.load()
            [engine] = [e for e in load.engines if e.engine == step["engine"]]
            got = (engine.running, engine.waiting, engine.slots)
            check(got == (step["running"], step["waiting"], step["slots"]), f"running, waiting, slots: {got}")
        elif op == "orca":
            report = await self.orca_report()
            check(report.named_metrics["running"] == step["running"], f"running {report.named_metrics['running']}")
            check("waiting" in report.named_metrics, "no waiting metric")
            utilization = report.application_utilization
            check(utilization == step["utilization"], f"application_utilization {utilization}")
            check(report.rps_fractional >= 0 and report.cpu_utilization >= 0, "negative rates")

    async def orca_report(self) -> Any:
        """One report of gRPC's standard out-of-band load stream, read as a raw client (it needs no token)."""
        async with grpc.aio.insecure_channel(self.target) as channel:
            method: Any = channel.unary_stream(f"/{orca.SERVICE_NAME}/StreamCoreMetrics")
            call = method(orca.OrcaLoadReportRequest().SerializeToString())
            async for raw in call:
                call.cancel()
                return orca.OrcaLoadReport.FromString(raw)
        raise Failed("the ORCA stream ended with no report")

    async def one_shot(self, step: dict[str, Any], stream: Any) -> None:
        outputs: list[Any] = []
        try:
            async for item in stream:
                if isinstance(item, Finished):
                    check(step["code"] == "OK", f"finished, expected {step['code']}")
                    check(name_of(item.reason, "FINISH_REASON_") == step["reason"], f"reason {item.reason}")
                    check_outputs(step, outputs)
                    if outputs and isinstance(outputs[0], AudioChunk):
                        check_audio("call", outputs)
                    return
                outputs.append(item)
        except RilletError as error:
            check_error(step, error)
            return
        raise Failed("the stream ended with no terminal message")

    async def drain(self) -> None:
        """SIGTERM the server, then wait until its health says NOT_SERVING: from then on it refuses new work."""
        os.kill(self.server_pid, signal.SIGTERM)
        async with grpc.aio.insecure_channel(self.target) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
            async for status in watch:
                if status.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    watch.cancel()
                    return

    async def finish(self) -> None:
        """Every request ended, and a session still open ends with OK after a half-close (no stray messages)."""
        if self.session is not None and self.closing is None:
            error = await asyncio.wait_for(self.close_session(), WAIT_S)
            check(error is None, f"the call ended with {error}")
        for request_id in self.requests:
            await self.terminal(request_id)


def model_field(model: Any, key: str) -> Any:
    value = getattr(model, key)
    return name_of(value, "KIND_") if key == "kind" else value


async def play(target: str, server_pid: int, scenarios: list[dict[str, Any]]) -> bool:
    passed_all = True
    # Balanced (weighted_round_robin on ORCA reports) over the one backend: the SDK's fleet mode, played throughout.
    async with Client.connect(target, round_robin=True) as client:
        for scenario in scenarios:
            runner = Runner(client, target, server_pid)
            detail = ""
            try:
                for step in scenario["steps"]:
                    await runner.step(step)
                await runner.finish()
            except (Failed, RilletError, TimeoutError) as error:
                detail = f"{type(error).__name__}: {error}"
            finally:
                if runner.session is not None:
                    await runner.session.aclose()
            passed_all &= not detail
            print(json.dumps({"scenario": scenario["name"], "passed": not detail, "detail": detail}), flush=True)
    return passed_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenarios", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    opts = parser.parse_args()
    with open(opts.scenarios) as file:
        scenarios = json.load(file)["scenarios"]
    sys.exit(0 if asyncio.run(play(opts.target, opts.server_pid, scenarios)) else 1)


if __name__ == "__main__":
    main()
