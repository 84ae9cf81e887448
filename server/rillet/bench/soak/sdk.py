"""The SDK scenario: the SDK itself on the shared channel (a one-shot generation, or a generate→speak chain)."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import grpc

from rillet.bench.soak.catalog import PROMPTS, RE
from rillet.bench.soak.context import Soak
from rillet.bench.soak.tally import watch
from rillet.bench.wire import Status, Stream
from rillet.client import (
    Client,
    Finished,
    FinishReason,
    ProtocolError,
    RequestStream,
    ResourceExhaustedError,
    RilletError,
)


async def sdk_drain(stream: RequestStream[Any], label: str) -> Finished | None:
    """Read an SDK stream to its end (the SDK checks seq itself); its progress feeds the hang watch."""
    progress = watch(Stream(label))
    finished = None
    async for event in stream:
        progress.last_at = time.perf_counter()
        if isinstance(event, Finished):
            finished = event
    progress.terminal = "finished"
    return finished


async def sdk_scenario(soak: Soak, rng: random.Random, channel: grpc.aio.Channel) -> None:
    """The SDK on the shared channel: a one-shot generation, or a generate→speak chain in an SDK session."""
    client = Client(channel)
    attempt = 0
    while True:
        try:
            soak.tally.calls(+1)
            try:
                if rng.random() < 0.5:
                    label = "generate (SDK one-shot)"
                    params = soak.generate_params(rng)
                    stream = client.generate(
                        params.text or PROMPTS[0],
                        max_tokens=params.max_tokens,
                        temperature=params.sampling.temperature,
                    )
                    finished = await sdk_drain(stream, label)
                    if finished is None or finished.reason is FinishReason.CANCELLED:
                        soak.tally.violation(f"{label}: ended {finished}")
                    else:
                        soak.tally.served[label] += 1
                else:
                    label = "chain (SDK session)"
                    async with client.session() as sdk:
                        generation = await sdk.generate(rng.choice(PROMPTS), max_tokens=rng.randint(4, 16))
                        speech = await sdk.synthesize(text_from=generation)
                        text, audio = await asyncio.gather(
                            sdk_drain(generation, "generate (SDK chain)"),
                            sdk_drain(speech, "synthesize (SDK chain)"),
                            return_exceptions=True,
                        )
                    if isinstance(text, BaseException):
                        raise text
                    if isinstance(audio, BaseException):
                        raise audio
                    if audio is None or audio.reason is FinishReason.CANCELLED:
                        soak.tally.violation(f"{label}: the chained synthesis ended {audio} ({text})")
                    else:
                        soak.tally.served[label] += 1
            finally:
                soak.tally.calls(-1)
            return
        except ResourceExhaustedError as error:
            status = Status(RE, error.reason, error.retry_after, error.message)
            attempt += 1
            if not await soak.backoff(rng, status, "SDK", attempt):
                return
        except ProtocolError as error:
            soak.tally.lost.append(f"SDK: {error}")
            return
        except RilletError as error:
            soak.tally.code(Status(error.code, error.reason, error.retry_after, error.message))
            soak.tally.violation(f"SDK: {error}")
            return
