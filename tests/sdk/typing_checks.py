"""Type-checker tests of the SDK (checked by mypy in `make lint`, never run): what must and must not type-check.

A `# type: ignore[...]` marks a call that must be rejected; with warn_unused_ignores, accepting it fails mypy.
"""

from __future__ import annotations

from typing import assert_type

from rillet.client import (
    AudioChunk,
    Client,
    Finished,
    GenerateResult,
    GenerateStream,
    Model,
    RilletError,
    Session,
    SynthesizeResult,
    SynthesizeStream,
    TokenDelta,
)


async def one_shot(client: Client) -> None:
    stream = client.generate("prompt", max_tokens=8, temperature=0.0, stop=["\n"], timeout=5.0)
    assert_type(stream, GenerateStream)
    async for event in stream:
        assert_type(event, TokenDelta | Finished)
    assert_type(await client.generate([1, 2, 3]).collect(), GenerateResult)
    async for chunk in client.synthesize("Hello."):
        assert_type(chunk, AudioChunk | Finished)
    assert_type(await client.synthesize("Hi.").collect(), SynthesizeResult)
    assert_type(await client.list_models(), list[Model])
    client.generate("x", max_tokens="8")  # type: ignore[arg-type]
    client.generate("x", temprature=0.5)  # type: ignore[call-arg]
    client.generate(42)  # type: ignore[arg-type]


async def session(client: Client) -> None:
    async with client.session(timeout=60) as s:
        assert_type(s, Session)
        text = await s.generate("prompt", timeout=2.0)
        speech = await s.synthesize(text_from=text)
        assert_type(speech, SynthesizeStream)
        await speech.append_text("more")
        async for event in text:
            assert_type(event, TokenDelta | Finished)
        await s.synthesize(text_from=speech)  # type: ignore[arg-type]


def errors(error: RilletError) -> None:
    assert_type(error.reason, str)
    assert_type(error.retry_after, float | None)
    assert_type(error.metadata, dict[str, str])
