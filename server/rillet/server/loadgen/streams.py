"""One request on the wire, timed and verified: every message in seq order, one terminal message, counts that add up.

Client-side times are `time.perf_counter()` at the moment a message is read from the call. Verification is the
bench's own and independent of the SDK: a stream whose seq skips or repeats, that goes on after its terminal message,
ends without one, or whose token (audio) count disagrees with the usage the server reports is counted LOST with the
reason, never as a success.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from rillet.client import _convert
from rillet.server.loadgen.workload import Plan, Workload
from rillet.v1 import common_pb2, generation_pb2, inference_service_pb2, speech_pb2

pb = inference_service_pb2

if TYPE_CHECKING:
    from rillet.v1.inference_service_pb2_grpc import InferenceServiceAsyncStub


@dataclass
class Record:
    """What the client saw of one request."""

    kind: str  # "text" or "speech"
    started: float
    first: float | None = None  # first token delta (text) or audio chunk (speech)
    ended: float | None = None
    gaps: list[float] = field(default_factory=list)  # between consecutive output messages
    messages: int = 0  # output messages (deltas or chunks)
    tokens: int = 0
    audio_s: float = 0.0
    error: str | None = None  # the gRPC status code (or in-band error code) when the request failed
    lost: str | None = None  # why verification failed, when it did

    @property
    def ok(self) -> bool:
        return self.error is None and self.lost is None


class Verifier:
    """Checks one request's messages as they arrive; the first violation is kept in `record.lost`."""

    def __init__(self, record: Record) -> None:
        self.record = record
        self._seq = 0
        self._terminal = False
        self._samples = 0
        self._last = 0.0

    def lose(self, why: str) -> None:
        """Mark the stream lost (the first reason is kept)."""
        if self.record.lost is None:
            self.record.lost = why

    def seq(self, seq: int) -> None:
        if self._terminal:
            self.lose("message after the terminal message")
        elif seq != self._seq:
            self.lose(f"seq {seq} where {self._seq} was due")
        self._seq = seq + 1

    def delta(self, delta: generation_pb2.TokenDelta, now: float) -> None:
        if self._output(now):
            self.record.tokens += len(delta.token_ids)

    def chunk(self, chunk: speech_pb2.AudioChunk, now: float) -> None:
        if not self._output(now):
            return
        samples = len(chunk.audio) // (2 * max(1, chunk.channel_count))
        if chunk.offset_samples != self._samples:
            self.lose(f"audio offset {chunk.offset_samples} where {self._samples} was due")
        self._samples += samples
        if chunk.sample_rate_hertz:
            self.record.audio_s += samples / chunk.sample_rate_hertz

    def finished(self, finished: common_pb2.Finished, now: float) -> None:
        self._terminal = True
        self.record.ended = now
        usage = finished.usage
        if self.record.kind == "text" and usage.output_tokens != self.record.tokens:
            self.lose(f"{self.record.tokens} tokens received, usage says {usage.output_tokens}")
        if self.record.kind == "speech" and usage.HasField("output_audio_duration"):
            reported = usage.output_audio_duration.seconds + usage.output_audio_duration.nanos / 1e9
            if abs(reported - self.record.audio_s) > 0.01:
                self.lose(f"{self.record.audio_s:.3f}s of audio received, usage says {reported:.3f}s")

    def failed(self, code: str, now: float) -> None:
        self._terminal = True
        self.record.ended = now
        self.record.error = code

    def closed(self, now: float) -> None:
        """The call ended with OK: it must have carried a terminal message."""
        if not self._terminal:
            self.lose("stream ended without a terminal message")
            self.record.ended = now

    def _output(self, now: float) -> bool:
        """Time an output message; False for one after the terminal message (not counted: `seq` lost the stream)."""
        record = self.record
        if self._terminal:
            return False
        if record.first is None:
            record.first = now
        else:
            record.gaps.append(now - self._last)
        self._last = now
        record.messages += 1
        return True


def _code_name(code: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return str(status.name)
    return f"CODE_{code}"


async def oneshot(stub: InferenceServiceAsyncStub, plan: Plan, prompt: str) -> Record:
    """One Generate (text) or Synthesize (speech) call."""
    call: Any
    if plan.workload is Workload.SPEECH:
        record = Record("speech", time.perf_counter())
        speech = pb.SynthesizeRequest(params=_convert.synthesize_params(prompt, plan.synthesize))
        call = stub.Synthesize(speech, timeout=plan.synthesize.timeout)
    else:
        record = Record("text", time.perf_counter())
        text = pb.GenerateRequest(params=_convert.generate_params(prompt, plan.generate))
        call = stub.Generate(text, timeout=plan.generate.timeout)
    verifier = Verifier(record)
    try:
        async for response in call:
            now = time.perf_counter()
            verifier.seq(response.seq)
            kind = response.WhichOneof("kind")
            if kind == "token_delta":
                verifier.delta(response.token_delta, now)
            elif kind == "audio_chunk":
                verifier.chunk(response.audio_chunk, now)
            elif kind == "finished":
                verifier.finished(response.finished, now)
            else:
                verifier.lose(f"unexpected message kind {kind!r}")
        verifier.closed(time.perf_counter())
    except grpc.aio.AioRpcError as error:
        verifier.failed(error.code().name, time.perf_counter())
    return record


class SessionCall:
    """One bidi Session call shared by the requests of one simulated user; a reader routes messages by request id."""

    def __init__(self, stub: InferenceServiceAsyncStub, timeout_s: float | None) -> None:
        self._call: Any = stub.Session(timeout=timeout_s)
        self._verifiers: dict[str, tuple[Verifier, asyncio.Future[None]]] = {}
        self._ended: dict[str, Verifier] = {}  # so that a message after a terminal one is still caught
        self._ids = itertools.count()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.failure: str | None = None

    async def aclose(self) -> None:
        if not self._call.done():
            await self._call.done_writing()
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), 5.0)
        except TimeoutError:
            self._call.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    async def run(self, plan: Plan, prompt: str) -> list[Record]:
        """One request (text or speech), or a chain: a generation and the synthesis that speaks it."""
        if self.failure is not None:  # the call is over: the request fails as the call did
            now = time.perf_counter()
            kind = "speech" if plan.workload is Workload.SPEECH else "text"
            return [Record(kind, now, ended=now, error=self.failure)]
        started = time.perf_counter()
        messages: list[tuple[str, pb.SessionRequest]] = []
        if plan.workload in (Workload.TEXT, Workload.CHAIN):
            rid = f"g{next(self._ids)}"
            start = _convert.start_generate(prompt, plan.generate)
            messages.append(("text", pb.SessionRequest(request_id=rid, start_generate=start)))
        if plan.workload in (Workload.SPEECH, Workload.CHAIN):
            sid = f"s{next(self._ids)}"
            if plan.workload is Workload.CHAIN:
                start_s = _convert.start_synthesize("", plan.synthesize, text_from_request_id=rid)
            else:
                start_s = _convert.start_synthesize(prompt, plan.synthesize)
            messages.append(("speech", pb.SessionRequest(request_id=sid, start_synthesize=start_s)))
        waits: list[asyncio.Future[None]] = []
        records: list[Record] = []
        loop = asyncio.get_running_loop()
        for kind, message in messages:
            record = Record(kind, started)
            done: asyncio.Future[None] = loop.create_future()
            self._verifiers[message.request_id] = (Verifier(record), done)
            records.append(record)
            waits.append(done)
        try:
            for _, message in messages:
                await self._call.write(message)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the reader reports how the call ended
        await asyncio.gather(*waits)
        return records

    async def _read(self) -> None:
        code = "OK"
        try:
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    break
                self._dispatch(response, time.perf_counter())
        except grpc.aio.AioRpcError as error:
            code = error.code().name
        except asyncio.CancelledError:
            code = "CANCELLED"
        self.failure = code if code != "OK" else "SESSION_ENDED"
        now = time.perf_counter()
        for verifier, done in self._verifiers.values():
            if code == "OK":
                verifier.closed(now)
            else:
                verifier.failed(code, now)
            if not done.done():
                done.set_result(None)
        self._verifiers.clear()

    def _dispatch(self, response: pb.SessionResponse, now: float) -> None:
        kind = response.WhichOneof("kind")
        if kind == "rejected":
            entry = self._verifiers.pop(response.request_id, None)
            if entry is not None:
                entry[0].failed(_code_name(response.rejected.code), now)
                entry[1].set_result(None)
            return
        entry = self._verifiers.get(response.request_id)
        if entry is None:
            ended = self._ended.get(response.request_id)
            if ended is not None:
                ended.seq(response.seq)  # after its terminal message: lost
            return
        verifier, done = entry
        verifier.seq(response.seq)
        if kind == "token_delta":
            verifier.delta(response.token_delta, now)
            return
        if kind == "audio_chunk":
            verifier.chunk(response.audio_chunk, now)
            return
        if kind == "finished":
            verifier.finished(response.finished, now)
        elif kind == "error":
            verifier.failed(_code_name(response.error.code), now)
        else:
            verifier.lose(f"unexpected message kind {kind!r}")
        del self._verifiers[response.request_id]
        self._ended[response.request_id] = verifier
        done.set_result(None)
