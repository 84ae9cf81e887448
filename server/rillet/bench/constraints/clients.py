"""The constrained-generation benchmark's clients: Rillet through its SDK, llama-server through /completion's SSE."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from rillet.bench.cpu.systems import Server, base
from rillet.client import Client, Finished, RilletError, TokenDelta

Schema = dict[str, Any]


@dataclass
class Output:
    """One request seen from the client: its text, tokens, timing and how it ended."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    tokens: int = 0
    ttft_s: float | None = None
    total_s: float = 0.0
    finish: str = "?"  # stop, length, stop_sequence, or refused: <why>


Generate = Callable[[str, Schema | None, int], Awaitable[Output]]
"""(prompt, JSON Schema or None for a free output, max_tokens) -> the output, greedy."""


def rillet_generate(client: Client) -> Generate:
    async def run(prompt: str, schema: Schema | None, max_tokens: int) -> Output:
        out = Output()
        started = time.perf_counter()
        try:
            async for event in client.generate(prompt, max_tokens=max_tokens, temperature=0.0, json_schema=schema):
                if isinstance(event, TokenDelta):
                    if event.token_ids and out.ttft_s is None:
                        out.ttft_s = time.perf_counter() - started
                    out.text += event.text
                    out.token_ids += event.token_ids
                elif isinstance(event, Finished):
                    out.finish = event.reason.name.lower()
                    out.tokens = event.usage.output_tokens
        except RilletError as error:
            out.finish = f"refused: {error.reason}"
        out.total_s = time.perf_counter() - started
        return out

    return run


_LLAMA_SERVER_FINISH = {"eos": "stop", "limit": "length", "word": "stop_sequence"}


def llama_server_generate(http: httpx.AsyncClient) -> Generate:
    """llama-server's own /completion, streamed: `json_schema` becomes its GBNF grammar (json-schema-to-grammar).

    Its prompt cache is on (`cache_prompt`, as Rillet's prefix cache is). Its end-of-generation token arrives as an
    event of its own and is counted in tokens_predicted; it is not counted here (Rillet neither sends nor counts it).
    """

    async def run(prompt: str, schema: Schema | None, max_tokens: int) -> Output:
        body: dict[str, Any] = {
            "prompt": prompt,
            "n_predict": max_tokens,
            "temperature": 0.0,
            "stream": True,
            "cache_prompt": True,
        }
        if schema is not None:
            body["json_schema"] = schema
        out = Output()
        started = time.perf_counter()
        async with http.stream("POST", "/completion", json=body) as response:
            if response.status_code != 200:
                detail = json.loads(await response.aread()).get("error", {}).get("message", "")
                out.finish = f"refused: HTTP {response.status_code} {detail[:80]}"
                out.total_s = time.perf_counter() - started
                return out
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("content") and out.ttft_s is None:
                    out.ttft_s = time.perf_counter() - started
                out.text += chunk.get("content", "")
                if chunk.get("stop"):
                    stop_type = str(chunk.get("stop_type", "?"))
                    out.finish = _LLAMA_SERVER_FINISH.get(stop_type, stop_type)
                    out.tokens = int(chunk.get("tokens_predicted", 0)) - (stop_type == "eos")
                    break
                if chunk.get("content"):  # the end-of-generation token's event has none
                    out.token_ids += chunk.get("tokens", [])
        out.total_s = time.perf_counter() - started
        return out

    return run


@contextlib.asynccontextmanager
async def generator_for(server: Server, request_timeout_s: float) -> AsyncIterator[Generate]:
    if base(server.name) == "rillet":
        async with Client.connect(f"127.0.0.1:{server.port}") as client:
            yield rillet_generate(client)
        return
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    timeout = httpx.Timeout(request_timeout_s, connect=10.0)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", limits=limits, timeout=timeout) as http:
        yield llama_server_generate(http)
