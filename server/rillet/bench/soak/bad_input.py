"""Bad input on purpose (undecodable frames, long ids, NUL, unknown names...): each gets its expected answer."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message

from rillet.bench.soak.catalog import INVALID, NOT_FOUND, UNDECODABLE
from rillet.bench.soak.context import Soak
from rillet.bench.soak.session import SoakSession, follow
from rillet.bench.wire import SERVICE, as_is, frame, status_of_call
from rillet.v1 import generation_pb2, inference_service_pb2, speech_pb2


async def bad_oneshot(soak: Soak, rng: random.Random, channel: grpc.aio.Channel) -> None:
    """One bad request on a one-shot RPC: the call must end with the expected code and reason."""
    cases: list[tuple[str, str, bytes, grpc.StatusCode, str]] = [
        ("Generate undecodable", "Generate", rng.choice(UNDECODABLE), INVALID, "UNDECODABLE_MESSAGE"),
        ("Synthesize undecodable", "Synthesize", rng.choice(UNDECODABLE), INVALID, "UNDECODABLE_MESSAGE"),
        (
            "Generate unknown model",
            "Generate",
            gen_request(model="no-such-model"),
            NOT_FOUND,
            "MODEL_NOT_FOUND",
        ),
        ("Generate model name too long", "Generate", gen_request(model="m" * 5000), INVALID, "NAME_TOO_LONG"),
        ("Generate temperature 7", "Generate", gen_request(temperature=7.0), INVALID, "SAMPLING_OUT_OF_RANGE"),
        ("Generate top_p 0", "Generate", gen_request(top_p=0.0), INVALID, "SAMPLING_OUT_OF_RANGE"),
        ("Generate max_tokens 0", "Generate", gen_request(max_tokens=0), INVALID, "MAX_TOKENS_OUT_OF_RANGE"),
        ("Generate empty prompt", "Generate", gen_request(text=""), INVALID, "EMPTY_PROMPT"),
        ("Synthesize NUL", "Synthesize", synth_request("Hello\0world."), INVALID, "NUL_CHARACTER"),
        ("Synthesize empty text", "Synthesize", synth_request(" "), INVALID, "EMPTY_TEXT"),
        (
            "Synthesize unknown voice",
            "Synthesize",
            synth_request("Hi.", voice="nobody"),
            NOT_FOUND,
            "MODEL_NOT_FOUND",
        ),
    ]
    label, method, request, code, reason = rng.choice(cases)
    call: grpc.aio.UnaryStreamCall[bytes, bytes] = channel.unary_stream(SERVICE + method, request_serializer=as_is)(
        request
    )
    soak.tally.calls(+1)
    try:
        async for _ in call:
            soak.tally.violation(f"bad one-shot {label}: got a message")
        soak.tally.violation(f"bad one-shot {label}: ended OK")
        return
    except grpc.aio.AioRpcError as error:
        status = status_of_call(error)
    finally:
        soak.tally.calls(-1)
    soak.expect(f"bad one-shot {label}", status, {code}, reason)


async def session_bad(
    soak: Soak, rng: random.Random, session: SoakSession, ids: Iterator[int], sent: asyncio.Event
) -> None:
    """One bad message in a session: rejected or failed in-band with its expected code; the session goes on."""
    try:
        await asyncio.sleep(rng.uniform(0, 0.5))
        rid = f"bad{next(ids)}"
        long_id = "L" * rng.choice((soak.id_limit + 1, 1000, 100_000))
        gen = inference_service_pb2.StartGenerate(params=generation_pb2.GenerateParams(text="Hi", max_tokens=4))
        rejects: list[tuple[str, bytes, str, grpc.StatusCode, str]] = [
            ("undecodable frame", rng.choice(UNDECODABLE), "", INVALID, "UNDECODABLE_MESSAGE"),
            ("over-long id (start)", frame(long_id, start_generate=gen), long_id, INVALID, "REQUEST_ID_TOO_LONG"),
            (
                "over-long id (cancel)",
                frame(long_id, cancel=inference_service_pb2.Cancel()),
                long_id,
                INVALID,
                "REQUEST_ID_TOO_LONG",
            ),
            ("empty id", frame("", start_generate=gen), "", INVALID, "MISSING_REQUEST_ID"),
            (
                "cancel of an unknown id",
                frame(rid, cancel=inference_service_pb2.Cancel()),
                rid,
                NOT_FOUND,
                "UNKNOWN_REQUEST_ID",
            ),
            (
                "append to an unknown id",
                frame(rid, append_text=inference_service_pb2.AppendText(text="x")),
                rid,
                NOT_FOUND,
                "UNKNOWN_REQUEST_ID",
            ),
            ("no kind", frame(rid), rid, INVALID, "MISSING_KIND"),
            (
                "Duration out of range",
                frame(
                    rid,
                    start_synthesize=inference_service_pb2.StartSynthesize(
                        params=speech_pb2.SynthesizeParams(
                            text="Hi.", max_chunk_duration=duration_pb2.Duration(seconds=10**14)
                        )
                    ),
                ),
                rid,
                INVALID,
                "INVALID_DURATION",
            ),
        ]

        def synth(**params: Any) -> inference_service_pb2.StartSynthesize:
            return inference_service_pb2.StartSynthesize(params=speech_pb2.SynthesizeParams(**params))

        def generate(**params: Any) -> inference_service_pb2.StartGenerate:
            return inference_service_pb2.StartGenerate(
                params=generation_pb2.GenerateParams(**{"text": "Hi", "max_tokens": 4, **params})
            )

        failures: list[tuple[str, Message, grpc.StatusCode, str]] = [
            ("NUL in synthesis text", synth(text="Hello\0there."), INVALID, "NUL_CHARACTER"),
            (
                "temperature out of range",
                generate(sampling=generation_pb2.SamplingParams(temperature=2.5)),
                INVALID,
                "SAMPLING_OUT_OF_RANGE",
            ),
            (
                "repetition_penalty 0",
                generate(sampling=generation_pb2.SamplingParams(repetition_penalty=0.0)),
                INVALID,
                "SAMPLING_OUT_OF_RANGE",
            ),
            ("max_tokens too large", generate(max_tokens=100_000), INVALID, "MAX_TOKENS_OUT_OF_RANGE"),
            ("unknown model", generate(model="gpt-17"), NOT_FOUND, "MODEL_NOT_FOUND"),
            ("unknown voice", synth(text="Hi.", voice="nobody"), NOT_FOUND, "MODEL_NOT_FOUND"),
            (
                "text_from an unknown request",
                inference_service_pb2.StartSynthesize(text_from_request_id="ghost"),
                NOT_FOUND,
                "UNKNOWN_SOURCE_REQUEST",
            ),
            ("empty synthesis text", synth(text=""), INVALID, "EMPTY_TEXT"),
        ]
        if not soak.chat:
            chat = generation_pb2.ChatPrompt(messages=[generation_pb2.ChatMessage(role="user", content="Hi")])
            chat_start = inference_service_pb2.StartGenerate(
                params=generation_pb2.GenerateParams(chat=chat, max_tokens=4)
            )
            failures.append(("chat prompt, no chat template", chat_start, INVALID, "CHAT_TEMPLATE_MISSING"))
        if rng.random() < len(rejects) / (len(rejects) + len(failures)):
            what, data, echo_id, code, reason = rng.choice(rejects)
            session.expect_rejection(echo_id, {code}, reason)
            if await session.send(data):
                soak.tally.bad_input[f"session: {what} (rejected {code.name})"] += 1
            else:
                session.expected.pop()
            return
        what, start, code, reason = rng.choice(failures)
        kind = "start_synthesize" if isinstance(start, inference_service_pb2.StartSynthesize) else "start_generate"
        request = session.track(rid, f"bad start ({what})")
        if not await session.send(frame(rid, **{kind: start})):
            return
        sent.set()
        outcome = await follow(session, request, None)
        if outcome.call_ended:
            soak.tally.verified(request.stream, complete=not outcome.abandoned)
            return
        soak.tally.verified(request.stream)
        if outcome.error is None or request.stream.outputs:
            soak.tally.violation(f"session bad start {what}: did not fail (outputs {request.stream.outputs})")
            return
        soak.expect(f"session: {what} (error {code.name})", outcome.error, {code}, reason)
    finally:
        sent.set()


def gen_request(
    *, model: str = "", text: str = "Hello", max_tokens: int = 4, temperature: float = 0.0, top_p: float = 1.0
) -> bytes:
    params = generation_pb2.GenerateParams(
        model=model,
        max_tokens=max_tokens,
        sampling=generation_pb2.SamplingParams(temperature=temperature, top_p=top_p),
    )
    if text:
        params.text = text
    return inference_service_pb2.GenerateRequest(params=params).SerializeToString()


def synth_request(text: str, voice: str = "") -> bytes:
    return inference_service_pb2.SynthesizeRequest(
        params=speech_pb2.SynthesizeParams(text=text, voice=voice)
    ).SerializeToString()
