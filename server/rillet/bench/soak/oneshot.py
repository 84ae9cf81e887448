"""One-shot scenarios: a Generate or Synthesize call on the generated stub, sometimes cancelled or disconnected."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import grpc

from rillet.bench.soak.catalog import RE
from rillet.bench.soak.context import Soak, speech_text
from rillet.bench.soak.session import CancelAt
from rillet.bench.soak.tally import watch
from rillet.bench.wire import Status, Stream, drain
from rillet.v1 import inference_service_pb2, inference_service_pb2_grpc, speech_pb2


async def oneshot_generate(
    soak: Soak, rng: random.Random, channel: grpc.aio.Channel, *, disconnect: bool = False
) -> None:
    """A one-shot Generate on the generated stub; with `disconnect`, its channel is closed mid-stream."""
    request = inference_service_pb2.GenerateRequest(params=soak.generate_params(rng))
    stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
    await oneshot(soak, rng, "generate (one-shot)", lambda: stub.Generate(request), channel, disconnect)


async def oneshot_synthesize(
    soak: Soak, rng: random.Random, channel: grpc.aio.Channel, *, disconnect: bool = False
) -> None:
    """A one-shot Synthesize on the generated stub; with `disconnect`, its channel is closed mid-stream."""
    params = speech_pb2.SynthesizeParams(text=speech_text(rng))
    request = inference_service_pb2.SynthesizeRequest(params=params)
    stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
    await oneshot(soak, rng, "synthesize (one-shot)", lambda: stub.Synthesize(request), channel, disconnect)


async def oneshot(
    soak: Soak,
    rng: random.Random,
    label: str,
    start: Callable[[], grpc.aio.UnaryStreamCall[Any, Any]],
    channel: grpc.aio.Channel,
    disconnect: bool,
) -> None:
    """Run a one-shot call to its end, retrying RESOURCE_EXHAUSTED; what arrived is verified either way.

    Some calls are cancelled at a random point; with `disconnect`, the channel is closed after a few outputs.
    """
    cancel = CancelAt(outputs=rng.randint(1, 3)) if disconnect else CancelAt.draw(rng, soak.opts.cancel_chance)
    close = channel.close if disconnect else None
    metric = "TTFT" if label.startswith("generate") else "TTFA"
    closing: list[asyncio.Task[None]] = []  # a channel close runs as a task: do_cancel is a plain callback
    attempt = 0
    while True:
        stream = watch(Stream(label, counts=False))
        call = start()
        soak.tally.calls(+1)
        timer: asyncio.TimerHandle | None = None
        cancelled = False

        def do_cancel(call: grpc.aio.UnaryStreamCall[Any, Any] = call) -> None:
            nonlocal cancelled
            cancelled = True
            if close is None:
                call.cancel()
            else:
                closing.append(asyncio.create_task(close()))

        def enough(read: Stream) -> bool:
            """Whether the client cancels here: after its `cancel.outputs`-th output."""
            return cancel is not None and cancel.outputs is not None and read.outputs >= cancel.outputs

        if cancel is not None and cancel.delay_s is not None:
            timer = asyncio.get_running_loop().call_later(cancel.delay_s, do_cancel)
        failure: Status | None = None
        try:
            if await drain(call, stream, lambda read: read.terminal is None and enough(read)):
                do_cancel()
            failure = stream.error
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            failure = Status(grpc.StatusCode.CANCELLED)
        finally:
            soak.tally.calls(-1)
            if timer is not None:
                timer.cancel()
            await asyncio.gather(*closing)
        finished = stream.finished
        if cancelled and finished is None and (failure is None or failure.code is grpc.StatusCode.CANCELLED):
            # The client left: the server's terminal is not for us to see; what arrived must still be in order.
            soak.tally.verified(stream, complete=False)
            point = "before output" if stream.outputs == 0 else "mid-stream"
            how = "disconnect" if close is not None else "cancel"
            soak.tally.cancelled[f"{label}: {how} {point}"] += 1
            return
        if failure is not None:
            if failure.code is RE and stream.next_seq == 0:
                attempt += 1
                if not cancelled and await soak.backoff(rng, failure, label, attempt):
                    continue
                return
            soak.tally.code(failure)
            soak.tally.violation(f"{label}: ended {failure.key}: {failure.message}")
            soak.tally.verified(stream, complete=False)
            return
        soak.tally.verified(stream)
        if finished is not None:
            soak.count_finished(label, finished, cancel_sent=False, outputs=stream.outputs, metric=metric)
            if stream.first is not None:
                soak.tally.latency[f"{metric} client, {label}"].append(stream.first - stream.started)
        return
