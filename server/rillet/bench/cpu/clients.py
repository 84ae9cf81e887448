"""The CPU benchmark's clients: Rillet's SDK, and the peers' OpenAI SSE streams; what one request saw."""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from rillet.bench.cpu.systems import Server, base, cached
from rillet.client import Client, Finished, Priority, TokenDelta


@dataclass
class StreamResult:
    """One request seen from the client."""

    sent_s: float
    """When it was sent (time.perf_counter): its tokens' arrivals are sent_s + ttft_s + the gaps so far."""
    ttft_s: float
    total_s: float
    tokens: int
    gaps_s: list[float]
    finish: str


class Generate(Protocol):
    """One streamed request: its prompt, its max_tokens where not the run's --max-tokens, and its class.

    `batch` sends Rillet's request as PRIORITY_BATCH; the OpenAI-compatible servers have no such class and get the
    same request as any other.
    """

    def __call__(
        self, prompt: str, max_tokens: int | None = None, /, *, batch: bool = False
    ) -> Awaitable[StreamResult]: ...


def rillet_generate(client: Client, default_max_tokens: int) -> Generate:
    async def run(prompt: str, max_tokens: int | None = None, *, batch: bool = False) -> StreamResult:
        limit = default_max_tokens if max_tokens is None else max_tokens
        started = time.perf_counter()
        first: float | None = None
        last = started
        gaps: list[float] = []
        tokens, finish = 0, "?"
        priority = Priority.BATCH if batch else Priority.INTERACTIVE
        async for event in client.generate(prompt, max_tokens=limit, temperature=0.0, priority=priority):
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
        return StreamResult(started, first, time.perf_counter() - started, tokens, gaps, finish)

    return run


def openai_generate(http: httpx.AsyncClient, system: str, default_max_tokens: int, min_tokens: bool) -> Generate:
    """Streaming /v1/completions over SSE.

    Each content event counts one token (llama-server and llama_cpp.server send one per token; a token whose text
    is empty or incomplete UTF-8 joins the next event's); the request's token count is the server's usage when sent.
    """
    body: dict[str, Any] = {"temperature": 0.0, "stream": True}
    if base(system) == "llama-server":
        # No EOS stop (the streams run to max_tokens); KV prefix reuse across requests as the variant says.
        body.update({"ignore_eos": True, "cache_prompt": cached(system)})
    suppress_eos = min_tokens and base(system) != "llama-server"

    async def run(prompt: str, max_tokens: int | None = None, *, batch: bool = False) -> StreamResult:
        del batch  # no such class here: the same request as any other
        limit = default_max_tokens if max_tokens is None else max_tokens
        request = {**body, "prompt": prompt, "max_tokens": limit}
        if suppress_eos:
            request["min_tokens"] = limit  # llama_cpp.server's only EOS suppression (a Python logits processor)
        started = time.perf_counter()
        first: float | None = None
        last = started
        gaps: list[float] = []
        events, usage_tokens, finish = 0, None, "?"
        async with http.stream("POST", "/v1/completions", json=request) as response:
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
        tokens = usage_tokens if usage_tokens is not None else (limit if finish == "length" else events)
        return StreamResult(started, first, time.perf_counter() - started, tokens, gaps, finish)

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
