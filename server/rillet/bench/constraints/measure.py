"""The benchmark's measurements: validity over the corpus, constrained cost, TTFT and tokens/s, per-token mask cost."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rillet.bench.constraints.clients import Generate, Output
from rillet.bench.constraints.corpus import Entry, valid
from rillet.bench.stats import median, percentile


@dataclass
class Validity:
    """One system over the corpus: every output's finish, and whether the finished ones validate."""

    system: str
    schemas: int
    finished: int  # STOP: the output is complete, so it must validate
    valid: int  # of the finished
    length: int  # cut by max_tokens: a prefix, not checked
    refused: dict[str, str] = field(default_factory=dict)  # name -> why (the system cannot enforce the schema)
    invalid: dict[str, str] = field(default_factory=dict)  # name -> the finished output that does not validate
    tokens: int = 0
    wall_s: float = 0.0

    @property
    def valid_share(self) -> float:
        return self.valid / self.finished if self.finished else 0.0


@dataclass
class Pass:
    """Requests run by `streams` workers until none is left: their TTFTs and the aggregate tokens/s."""

    label: str
    streams: int
    requests: int
    tokens: int
    wall_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    finishes: dict[str, int]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0


async def closed_loop(
    generate: Generate, jobs: Sequence[tuple[str, dict[str, Any] | None, int]], streams: int
) -> tuple[list[Output], float]:
    """Run (prompt, schema, max_tokens) jobs with `streams` workers; the outputs in job order and the wall time."""
    outputs: list[Output | None] = [None] * len(jobs)
    queue = list(enumerate(jobs))

    async def worker() -> None:
        while queue:
            index, (prompt, schema, max_tokens) = queue.pop(0)
            outputs[index] = await generate(prompt, schema, max_tokens)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(streams)))
    return [o for o in outputs if o is not None], time.perf_counter() - started


def summarize(label: str, streams: int, outputs: Sequence[Output], wall_s: float) -> Pass:
    ttfts = [o.ttft_s for o in outputs if o.ttft_s is not None] or [float("nan")]
    finishes: dict[str, int] = {}
    for o in outputs:
        finishes[o.finish] = finishes.get(o.finish, 0) + 1
    return Pass(
        label,
        streams,
        len(outputs),
        sum(o.tokens for o in outputs),
        wall_s,
        median(ttfts),
        percentile(ttfts, 99),
        finishes,
    )


async def validity(
    system: str, generate: Generate, entries: Sequence[Entry], max_tokens: int, streams: int
) -> tuple[Validity, list[Output]]:
    """Every corpus schema once, `streams` at a time; each finished output checked with jsonschema."""
    jobs = [(e.prompt, e.schema, max_tokens) for e in entries]
    outputs, wall = await closed_loop(generate, jobs, streams)
    result = Validity(system, len(entries), 0, 0, 0, wall_s=wall, tokens=sum(o.tokens for o in outputs))
    for entry, out in zip(entries, outputs, strict=True):
        if out.finish.startswith("refused"):
            result.refused[entry.name] = out.finish
        elif out.finish == "stop":
            result.finished += 1
            if valid(entry.schema, out.text):
                result.valid += 1
            else:
                result.invalid[entry.name] = out.text[:200]
        elif out.finish == "length":
            result.length += 1
    return result, outputs


async def constrained_cost(
    generate: Generate, entries: Sequence[Entry], outputs: Sequence[Output], streams: int
) -> tuple[Pass, Pass]:
    """The same prompts with and without their schemas, each free request given the length its constrained one had.

    Equal prompts and output lengths, so the two rates differ by what the constraint costs per token (the schemas
    are compiled and cached by the validity pass before this one).
    """
    lengths = [max(1, o.tokens) for o in outputs]
    constrained = [(e.prompt, e.schema, n) for e, n in zip(entries, lengths, strict=True)]
    free = [(e.prompt, None, n) for e, n in zip(entries, lengths, strict=True)]
    c_out, c_wall = await closed_loop(generate, constrained, streams)
    f_out, f_wall = await closed_loop(generate, free, streams)
    return summarize("constrained", streams, c_out, c_wall), summarize("unconstrained", streams, f_out, f_wall)


async def first_and_repeated(
    generate: Generate, entries: Sequence[Entry], max_tokens: int, streams: int
) -> tuple[Pass, Pass]:
    """Schemas the server has not seen (TTFT includes their compilation), then the same requests again."""
    jobs = [(e.prompt, e.schema, max_tokens) for e in entries]
    first, first_wall = await closed_loop(generate, jobs, streams)
    again, again_wall = await closed_loop(generate, jobs, streams)
    return summarize("first", streams, first, first_wall), summarize("repeated", streams, again, again_wall)


def mask_cost(gguf: str, entries: Sequence[Entry], outputs: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Per token of Rillet's outputs (their token ids) replayed through a fresh matcher: the mask, and applying it.

    In process, on the model's own vocabulary (the engine's guide.Guide and guide.apply). Apply is timed on every
    token, as for a sampled request; a greedy request skips it whenever its best token is allowed.
    """
    from llguidance import LLMatcher

    from rillet.server.engine.constraints import grammar
    from rillet.server.engine.llamacpp.guide import Guide, apply, guidance_tokenizer
    from rillet.server.types import Constraint, ConstraintKind

    tokenizer = guidance_tokenizer(Path(gguf))
    vocabulary = tokenizer.vocab_size
    row = np.random.default_rng(0).normal(size=vocabulary).astype(np.float32)
    compute: list[float] = []
    applying: list[float] = []
    for entry, tokens in zip(entries, outputs, strict=True):
        constraint = Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(entry.schema))
        guide = Guide(LLMatcher(tokenizer, grammar(constraint), log_level=0))
        for token in tokens:
            started = time.perf_counter()
            words = guide.mask(vocabulary)
            masked = time.perf_counter()
            logits = row.copy()
            copied = time.perf_counter()
            apply(logits, words)
            compute.append(masked - started)
            applying.append(time.perf_counter() - copied)
            guide.consume(token)
    total = [a + b for a, b in zip(compute, applying, strict=True)] or [float("nan")]
    compute = compute or [float("nan")]
    applying = applying or [float("nan")]
    return {
        "tokens": len(total),
        "vocabulary": vocabulary,
        "mask_us": {"p50": median(compute) * 1e6, "p99": percentile(compute, 99) * 1e6},
        "apply_us": {"p50": median(applying) * 1e6, "p99": percentile(applying, 99) * 1e6},
        "total_us": {
            "p50": median(total) * 1e6,
            "p99": percentile(total, 99) * 1e6,
            "mean": float(np.mean(total)) * 1e6,
        },
    }
