"""Session scenarios on raw frames: mixed requests, cancels, bad frames, half-closes early or late, disconnects."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Iterator

import grpc

from rillet.bench.soak.bad_input import session_bad
from rillet.bench.soak.catalog import INVALID, OK, SENTENCES
from rillet.bench.soak.context import Soak, connect, speech_text
from rillet.bench.soak.oneshot import oneshot_generate, oneshot_synthesize
from rillet.bench.soak.session import CancelAt, SoakSession, follow, settle
from rillet.bench.wire import Status, frame
from rillet.v1 import common_pb2, inference_service_pb2, speech_pb2


async def session_scenario(soak: Soak, rng: random.Random, channel: grpc.aio.Channel) -> None:
    await session(soak, rng, channel, disconnect=None)


async def disconnect_scenario(soak: Soak, rng: random.Random, channel: grpc.aio.Channel) -> None:
    """On a channel of its own: a one-shot call or a session whose channel is closed mid-stream."""
    own = connect(soak.target)
    try:
        if rng.random() < 0.3:
            call = oneshot_generate if rng.random() < 0.5 else oneshot_synthesize
            await call(soak, rng, own, disconnect=True)
        else:
            await session(soak, rng, own, disconnect=own)
    finally:
        await own.close()


async def session(
    soak: Soak, rng: random.Random, channel: grpc.aio.Channel, disconnect: grpc.aio.Channel | None
) -> None:
    """A Session with 1-4 requests of mixed kinds, some cancelled, some bad frames among them.

    It ends by half-close (early, while requests run, or once they are done) or, with `disconnect`, by closing
    the channel mid-stream.
    """
    ids = itertools.count()
    label = "disconnected session" if disconnect else "session"
    calls = SoakSession(channel, soak.tally, label, soak.id_limit)
    early_close = disconnect is None and rng.random() < 0.3
    cancel_chance = 0.0 if early_close else soak.opts.cancel_chance
    sent_all: list[asyncio.Event] = []
    jobs: list[asyncio.Task[None]] = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.choices(("generate", "synthesize", "streaming", "chain"), (0.35, 0.2, 0.2, 0.25))[0]
        event = asyncio.Event()
        sent_all.append(event)
        plan = session_request(soak, rng, calls, kind, ids, CancelAt.draw(rng, cancel_chance), early_close, event)
        jobs.append(asyncio.create_task(plan))
    for _ in range(rng.randint(1, 3) if rng.random() < soak.opts.bad_chance else 0):
        event = asyncio.Event()
        sent_all.append(event)
        jobs.append(asyncio.create_task(session_bad(soak, rng, calls, ids, event)))
    try:
        if disconnect is not None:
            try:
                await asyncio.wait_for(calls.first_output.wait(), rng.uniform(0.2, 6.0))
                await asyncio.sleep(rng.uniform(0, 0.5))
            except TimeoutError:
                pass
            calls.disconnecting = True
            await disconnect.close()  # abrupt: every call on the channel is cancelled, the server sees it go
            soak.tally.events["session disconnected mid-stream"] += 1
            await calls.ended()
            await asyncio.gather(*jobs)
            return
        if early_close:
            await asyncio.gather(*(e.wait() for e in sent_all))
            await calls.half_close()
            soak.tally.events["session half-closed with requests in flight"] += 1
            await asyncio.gather(*jobs)
        else:
            await asyncio.gather(*jobs)
            await calls.half_close()
        final = await calls.ended()
        if final.code is not OK:
            soak.tally.code(final)
            soak.tally.violation(f"session ended {final.key} after its half-close: {final.message}")
        for rid, codes, reason in calls.expected:
            soak.tally.violation(f"session: no rejected {'/'.join(c.name for c in codes)} {reason} for {rid[:80]!r}")
    finally:
        for job in jobs:
            job.cancel()
        calls.abort()


async def session_request(
    soak: Soak,
    rng: random.Random,
    session: SoakSession,
    kind: str,
    ids: Iterator[int],
    cancel: CancelAt | None,
    early_close: bool,
    sent: asyncio.Event,
) -> None:
    """One planned request of a session (a chain is two), retried after RESOURCE_EXHAUSTED unless half-closed."""
    try:
        await asyncio.sleep(rng.uniform(0, 0.3))
        attempt = 0
        while True:
            if kind == "chain":
                retry = await chain(soak, rng, session, ids, cancel, sent)
            elif kind == "streaming":
                retry = await streaming(soak, rng, session, ids, cancel, early_close, sent)
            else:
                rid = f"{kind[0]}{next(ids)}"
                if kind == "generate":
                    start = frame(
                        rid, start_generate=inference_service_pb2.StartGenerate(params=soak.generate_params(rng))
                    )
                    label, metric = "generate (session)", "TTFT"
                else:
                    params = speech_pb2.SynthesizeParams(text=speech_text(rng))
                    start = frame(rid, start_synthesize=inference_service_pb2.StartSynthesize(params=params))
                    label, metric = "synthesize (session)", "TTFA"
                request = session.track(rid, label)
                if not await session.send(start):
                    soak.tally.verified(request.stream, complete=False)
                    return
                sent.set()
                retry = settle(soak, label, metric, await follow(session, request, cancel))
            if retry is None:
                return
            if early_close:
                soak.tally.code(retry)
                soak.tally.events["RESOURCE_EXHAUSTED in a half-closed session: not retried"] += 1
                return
            attempt += 1
            if not await soak.backoff(rng, retry, f"session {kind}", attempt):
                return
    finally:
        sent.set()


async def chain(
    soak: Soak,
    rng: random.Random,
    session: SoakSession,
    ids: Iterator[int],
    cancel: CancelAt | None,
    sent: asyncio.Event,
) -> Status | None:
    """A generation and a synthesis speaking it (text_from_request_id), started back to back."""
    n = next(ids)
    gen_id, speech_id = f"g{n}", f"s{n}"
    params = soak.generate_params(rng)
    params.max_tokens = min(params.max_tokens, 24)
    gen = session.track(gen_id, "generate (chain)")
    speech = session.track(speech_id, "synthesize (chained)")
    start_gen = frame(gen_id, start_generate=inference_service_pb2.StartGenerate(params=params))
    start_speech = frame(speech_id, start_synthesize=inference_service_pb2.StartSynthesize(text_from_request_id=gen_id))
    if not await session.send(start_gen) or not await session.send(start_speech):
        soak.tally.verified(gen.stream, complete=False)
        soak.tally.verified(speech.stream, complete=False)
        return None
    sent.set()
    cancel_gen = cancel is not None and rng.random() < 0.5
    gen_outcome, speech_outcome = await asyncio.gather(
        follow(session, gen, cancel if cancel_gen else None),
        follow(session, speech, None if cancel_gen else cancel),
    )
    gen_failed = gen_outcome.error is not None or (
        gen_outcome.finished is not None and gen_outcome.finished.reason == common_pb2.FINISH_REASON_CANCELLED
    )
    gen_retry = settle(soak, "generate (chain)", "TTFT", gen_outcome)
    done_first = (
        gen.terminal_order is not None
        and speech.terminal_order is not None
        and gen.terminal_order < speech.terminal_order
    )
    speech_retry = settle(
        soak, "synthesize (chained)", "TTFA", speech_outcome, source_failed=gen_failed, source_done_first=done_first
    )
    if gen_retry is not None and speech_retry is not None:
        soak.tally.code(speech_retry)  # both refused: one retry of the pair
    return gen_retry or speech_retry


async def streaming(
    soak: Soak,
    rng: random.Random,
    session: SoakSession,
    ids: Iterator[int],
    cancel: CancelAt | None,
    early_close: bool,
    sent: asyncio.Event,
) -> Status | None:
    """A streaming-input synthesis: text in AppendText pieces, then EndInput (or the session's half-close).

    Sometimes a NUL piece (rejected, the request goes on) or, once audio flows, a duplicate start (rejected).
    """
    rid = f"t{next(ids)}"
    words = " ".join(rng.sample(SENTENCES, rng.randint(1, 3))).split(" ")
    cut = rng.randint(1, len(words))
    pieces = [" ".join(words[:cut])] + [" " + w for w in words[cut:]]
    request = session.track(rid, "synthesize (streaming input)")
    start = inference_service_pb2.StartSynthesize(
        params=speech_pb2.SynthesizeParams(text=pieces[0]), streaming_input=True
    )
    if not await session.send(frame(rid, start_synthesize=start)):
        soak.tally.verified(request.stream, complete=False)
        return None
    mid_input_cancel = cancel is not None and rng.random() < 0.3
    # A duplicate start is refused only while the request is surely in flight: not with a Cancel on its way (the
    # request could end and free its id before the duplicate arrives, which the server then rightly starts).
    duplicate = not early_close and cancel is None and rng.random() < 0.15
    nul = rng.random() < 0.1
    cancelled_mid_input = False
    follower = asyncio.create_task(follow(session, request, None if mid_input_cancel else cancel))
    try:
        for i, piece in enumerate(pieces[1:], 1):
            if follower.done():
                break
            if not early_close:
                await asyncio.sleep(rng.uniform(0, 0.15))
            if nul and i == 1:
                session.expect_rejection(rid, {INVALID}, "NUL_CHARACTER")
                if await session.follow_up(request, append_text=inference_service_pb2.AppendText(text="a\0b")):
                    soak.tally.bad_input["session: NUL in AppendText (rejected INVALID_ARGUMENT)"] += 1
                else:
                    session.expected.pop()
            if mid_input_cancel and i == max(1, len(pieces) // 2):
                cancelled_mid_input = await session.follow_up(request, cancel=inference_service_pb2.Cancel())
                break
            await session.follow_up(request, append_text=inference_service_pb2.AppendText(text=piece))
        else:
            if duplicate:
                # Only once audio flows is the request surely in flight (it cannot end before EndInput).
                await session.follow_up(request, append_text=inference_service_pb2.AppendText(text=" Again."))
                audio = asyncio.create_task(request.has_output.wait())
                await asyncio.wait({audio, follower}, return_when=asyncio.FIRST_COMPLETED)
                audio.cancel()
                if request.stream.outputs and request.stream.terminal is None:
                    session.expect_rejection(rid, {grpc.StatusCode.ALREADY_EXISTS}, "DUPLICATE_REQUEST_ID")
                    if await session.send(frame(rid, start_synthesize=start)):
                        soak.tally.bad_input["session: duplicate start (rejected ALREADY_EXISTS)"] += 1
                    else:
                        session.expected.pop()
            if not early_close:
                await session.follow_up(request, end_input=inference_service_pb2.EndInput())
        sent.set()
        outcome = await follower
        outcome.cancel_sent = outcome.cancel_sent or cancelled_mid_input
        return settle(soak, "synthesize (streaming input)", "TTFA", outcome)
    finally:
        follower.cancel()


# -- the SDK --
