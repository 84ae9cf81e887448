"""What the CPU benchmark sends (its prompts) and its clients: Rillet's SDK, and the peers' OpenAI SSE streams."""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from rillet.bench.cpu.systems import Server, base, cached
from rillet.client import Client, Finished, TokenDelta

PROMPTS = (
    "The old lighthouse keeper climbed the stairs every evening, and on the last night of the year he",
    "In the kitchen of the small restaurant, the chef explained to the new cook that the secret of a good soup",
    "The history of the printing press begins in the fifteenth century, when",
    "Dear team, thank you all for your hard work this quarter. I wanted to share a few updates about",
    "The mountain trail was steep and narrow. After three hours of walking, the hikers finally reached",
    "To make a simple loaf of bread, you need flour, water, salt and yeast. First,",
    "The city council met on Tuesday to discuss the new bicycle lanes. Several residents argued that",
    "When the spacecraft entered the orbit of the red planet, the crew noticed",
    "My grandmother used to tell us a story about a fox and a crow. The fox",
    "The quarterly report shows that sales in the northern region grew by twelve percent, mainly because",
    "Rivers shape the land around them in many ways. Over thousands of years,",
    "The detective looked at the muddy footprints by the window and said",
)


SYSTEM_PROMPT_SENTENCES = (
    "You are the assistant of a small family bakery in a quiet town.",
    "You answer questions from customers about bread, cakes, opening hours, orders and allergies.",
    "Be friendly and precise, and keep every answer short enough to read aloud on the phone.",
    "The bakery opens at seven in the morning and closes at six in the evening, except on Sundays.",
    "Orders for birthday cakes need two days of notice and can be picked up after ten.",
    "All breads are baked with flour from the mill down the road, and rye bread is baked on Tuesdays.",
)


def shared_prefix(gguf: str, tokens: int) -> str:
    """A system prompt of exactly `tokens` tokens (BOS included) under the model's tokenizer, ending a paragraph."""
    from rillet.server.engine.llamacpp import native

    native.init_backend()
    vocab = native.LlamaModel(gguf, vocab_only=True)
    try:
        words: list[str] = []
        index = 0
        while True:
            sentence = SYSTEM_PROMPT_SENTENCES[index % len(SYSTEM_PROMPT_SENTENCES)]
            for word in sentence.split():
                candidate = " ".join([*words, word])
                if len(vocab.tokenize(candidate, add_special=True, parse_special=False)) > tokens:
                    return " ".join(words)
                words.append(word)
            index += 1
    finally:
        vocab.free()


def workload_prompts(opts: argparse.Namespace, gguf: str) -> tuple[str, ...]:
    """The prompts requests cycle through."""
    if opts.workload == "standard":
        return PROMPTS
    prefix = shared_prefix(gguf, opts.prefix_tokens)
    return tuple(f"{prefix}\n\n{prompt}" for prompt in PROMPTS)


@dataclass
class StreamResult:
    """One request seen from the client."""

    ttft_s: float
    total_s: float
    tokens: int
    gaps_s: list[float]
    finish: str


Generate = Callable[[str], Awaitable[StreamResult]]


def rillet_generate(client: Client, max_tokens: int) -> Generate:
    async def run(prompt: str) -> StreamResult:
        started = time.perf_counter()
        first: float | None = None
        last = started
        gaps: list[float] = []
        tokens, finish = 0, "?"
        async for event in client.generate(prompt, max_tokens=max_tokens, temperature=0.0):
            now = time.perf_counter()
            if isinstance(event, TokenDelta):
                count = len(event.token_ids)
                if count == 0:
                    continue
                if first is None:
                    first = now - started
                else:
                    gaps += [(now - last) / count] * count
                last = now
                tokens += count
            elif isinstance(event, Finished):
                finish = event.reason.name.lower()
                tokens = event.usage.output_tokens
        assert first is not None, "no token arrived"
        return StreamResult(first, time.perf_counter() - started, tokens, gaps, finish)

    return run


def openai_generate(http: httpx.AsyncClient, system: str, max_tokens: int, min_tokens: bool) -> Generate:
    """Streaming /v1/completions over SSE.

    Each content event counts one token (llama-server and llama_cpp.server send one per token; a token whose text
    is empty or incomplete UTF-8 joins the next event's); the request's token count is the server's usage when sent.
    """
    body: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 0.0, "stream": True}
    if base(system) == "llama-server":
        # No EOS stop (the streams run to max_tokens); KV prefix reuse across requests as the variant says.
        body.update({"ignore_eos": True, "cache_prompt": cached(system)})
    elif min_tokens:
        body["min_tokens"] = max_tokens  # llama_cpp.server's only EOS suppression (a Python logits processor)

    async def run(prompt: str) -> StreamResult:
        started = time.perf_counter()
        first: float | None = None
        last = started
        gaps: list[float] = []
        events, usage_tokens, finish = 0, None, "?"
        async with http.stream("POST", "/v1/completions", json={**body, "prompt": prompt}) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                now = time.perf_counter()
                chunk = json.loads(data)
                usage = chunk.get("usage")
                if usage:
                    usage_tokens = int(usage["completion_tokens"])
                for choice in chunk.get("choices") or ():
                    if choice.get("finish_reason"):
                        finish = str(choice["finish_reason"])
                    if choice.get("text"):
                        if first is None:
                            first = now - started
                        else:
                            gaps.append(now - last)
                        last = now
                        events += 1
        assert first is not None, "no token arrived"
        tokens = usage_tokens if usage_tokens is not None else (max_tokens if finish == "length" else events)
        return StreamResult(first, time.perf_counter() - started, tokens, gaps, finish)

    return run


@contextlib.asynccontextmanager
async def generator_for(server: Server, opts: argparse.Namespace) -> AsyncIterator[Generate]:
    if base(server.name) == "rillet":
        async with Client.connect(f"127.0.0.1:{server.port}") as client:
            yield rillet_generate(client, opts.max_tokens)
    else:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        timeout = httpx.Timeout(opts.request_timeout, connect=10.0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", limits=limits, timeout=timeout) as h:
            yield openai_generate(h, server.name, opts.max_tokens, opts.peer_min_tokens)
