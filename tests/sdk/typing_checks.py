"""Type-checker tests of the SDK (checked by mypy in `make lint`, never run): what must and must not type-check.

A `# type: ignore[...]` marks a call that must be rejected; with warn_unused_ignores, accepting it fails mypy.
"""

from __future__ import annotations

from typing import assert_type

from pydantic import BaseModel

from rillet.client import (
    AudioChunk,
    ChannelConfig,
    Client,
    Finished,
    GenerateOptions,
    GenerateResult,
    GenerateStream,
    Model,
    RilletError,
    Session,
    SynthesizeOptions,
    SynthesizeResult,
    SynthesizeStream,
    TokenDelta,
)


class Point(BaseModel):
    x: int


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
    assert_type(await client.generate("x", json_schema=Point).parse(Point), Point)
    client.generate("x", json_schema={"type": "object"}, choice=["a", "b"], json_object=True)
    client.generate("x", choice="yes")  # a str is a Sequence[str]: refused at run time (TypeError), not here
    client.generate("x", regex=3)  # type: ignore[arg-type]
    await client.generate("x").parse(dict)  # type: ignore[type-var]


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


async def options(client: Client, session: Session) -> None:
    greedy = GenerateOptions(max_tokens=8, temperature=0.0, stop=["\n"])
    assert_type(client.generate("prompt", greedy), GenerateStream)
    assert_type(client.generate("prompt", greedy, seed=3, metadata=[("k", "v")]), GenerateStream)
    assert_type(await session.generate("prompt", greedy, request_id="a", timeout=2.0), GenerateStream)
    assert_type(client.synthesize("Hi.", SynthesizeOptions(voice="joe"), timeout=5.0), SynthesizeStream)
    assert_type(
        await session.synthesize(options=SynthesizeOptions(max_chunk_s=0.2), streaming_input=True), SynthesizeStream
    )
    client.generate("prompt", SynthesizeOptions())  # type: ignore[arg-type]
    client.synthesize("Hi.", greedy)  # type: ignore[arg-type]
    client.synthesize("Hi.", max_tokens=8)  # type: ignore[call-arg]
    GenerateOptions("gemma")  # type: ignore[call-arg]
    GenerateOptions(max_tokens="8")  # type: ignore[arg-type]
    greedy.max_tokens = 16  # type: ignore[misc]
    Client.from_config(ChannelConfig(["10.0.0.1:50051", "10.0.0.2:50051"], connections=2))
    ChannelConfig("127.0.0.1:50051", connections="2")  # type: ignore[arg-type]


def errors(error: RilletError) -> None:
    assert_type(error.reason, str)
    assert_type(error.retry_after, float | None)
    assert_type(error.metadata, dict[str, str])
