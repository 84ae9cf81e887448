"""One `rillet bench` request on the wire: a one-shot call, or a request (a chain is two) on a user's Session call.

What a request asks for is built by the SDK's own converters from the plan's options, as the SDK would send it; what
comes back is read and verified by the bench's raw client (rillet.bench.wire), independent of the SDK.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any

import grpc

from rillet.bench.loadgen.workload import Plan, Workload
from rillet.bench.wire import RawSession, Stream, drain
from rillet.client import _convert
from rillet.v1 import inference_service_pb2 as pb

if TYPE_CHECKING:
    from rillet.v1.inference_service_pb2_grpc import InferenceServiceAsyncStub


async def oneshot(stub: InferenceServiceAsyncStub, plan: Plan, prompt: str) -> Stream:
    """One Generate (text) or Synthesize (speech) call."""
    call: Any
    if plan.workload is Workload.SPEECH:
        stream = Stream("Synthesize", "speech")
        speech = pb.SynthesizeRequest(params=_convert.synthesize_params(prompt, plan.synthesize))
        call = stub.Synthesize(speech, timeout=plan.synthesize.timeout)
    else:
        stream = Stream("Generate", "text")
        text = pb.GenerateRequest(params=_convert.generate_params(prompt, plan.generate))
        call = stub.Generate(text, timeout=plan.generate.timeout)
    await drain(call, stream)
    return stream


class SessionUser:
    """One simulated user's Session call: its requests run in it one after another (a chain: both at once)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.session = RawSession(channel, "rillet bench")
        self._ids = itertools.count()

    async def run(self, plan: Plan, prompt: str) -> list[Stream]:
        """One request (text or speech), or a chain: a generation and the synthesis that speaks it."""
        started = time.perf_counter()  # a chain's two requests are timed from the same moment
        frames: list[tuple[str, str, pb.SessionRequest]] = []
        if plan.workload in (Workload.TEXT, Workload.CHAIN):
            rid = f"g{next(self._ids)}"
            start = _convert.start_generate(prompt, plan.generate)
            frames.append((rid, "text", pb.SessionRequest(request_id=rid, start_generate=start)))
        if plan.workload in (Workload.SPEECH, Workload.CHAIN):
            sid = f"s{next(self._ids)}"
            if plan.workload is Workload.CHAIN:
                start_s = _convert.start_synthesize("", plan.synthesize, text_from_request_id=rid)
            else:
                start_s = _convert.start_synthesize(prompt, plan.synthesize)
            frames.append((sid, "speech", pb.SessionRequest(request_id=sid, start_synthesize=start_s)))
        requests = [self.session.track(rid, f"{kind} {rid}", kind) for rid, kind, _ in frames]
        for request in requests:
            request.stream.started = started
        for _, _, message in frames:
            if not await self.session.send(message.SerializeToString()):
                break  # the call is over: the reader ends every request with its status
        for request in requests:
            await request.done.wait()
        return [request.stream for request in requests]

    async def aclose(self) -> None:
        await self.session.aclose()
