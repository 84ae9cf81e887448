"""What the load generator sends: the workload, the RPC shape, the prompts (built in, from a file, shared prefix)."""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rillet.client import GenerateOptions, SynthesizeOptions


class Workload(enum.StrEnum):
    """What each request does."""

    TEXT = "text"  # a generation
    SPEECH = "speech"  # a synthesis of the prompt text
    CHAIN = "chain"  # a generation spoken as it streams (a synthesize with text_from_request_id): sessions only

    def rpc_for(self, asked: Rpc | None) -> Rpc:
        """The RPC to run it over: the one asked for, else one-shot calls, or sessions (the only RPC of a chain)."""
        if asked is None:
            return Rpc.SESSION if self is Workload.CHAIN else Rpc.ONESHOT
        if self is Workload.CHAIN and asked is not Rpc.SESSION:
            raise ValueError("the chain workload runs in sessions only: leave --rpc out, or give --rpc session")
        return asked


class Rpc(enum.StrEnum):
    """How requests reach the server."""

    ONESHOT = "oneshot"  # one Generate or Synthesize call per request
    SESSION = "session"  # bidi Session calls: each concurrent user keeps one and runs its requests in it


BUILTIN_PROMPTS = (
    "The river ran quietly past the old mill, and",
    "Write a short note to a colleague about the meeting moved to Thursday.",
    "In the morning the market opened early because",
    "A list of three things to check before a long bicycle ride:",
    "She opened the letter, read the first line, and",
    "The weather station reported light rain in the hills, so",
    "Explain in one paragraph why bridges expand in summer.",
    "Once upon a time, in a village between two lakes,",
)
"""Completion-style prompts of a few words each (the default CPU model is a base model, not a chat model)."""

PREFIX_WORDS = (
    "you", "are", "a", "careful", "assistant", "for", "a", "railway", "company", "answer", "briefly", "and",
    "cite", "the", "timetable", "when", "asked", "about", "trains", "platforms", "or", "delays",
)  # fmt: skip


def shared_prefix(words: int) -> str:
    """A deterministic system-prompt-like prefix of `words` words that every request shares (prefix-reuse load)."""
    return " ".join(itertools.islice(itertools.cycle(PREFIX_WORDS), words))


def load_prompts(path: Path | None) -> tuple[str, ...]:
    """Prompts from a file (one per line, blank lines skipped), or the built-in ones."""
    if path is None:
        return BUILTIN_PROMPTS
    prompts = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if not prompts:
        raise ValueError(f"{path} has no prompts (one per line)")
    return prompts


GENERATE = GenerateOptions(max_tokens=64, timeout=120.0)
SYNTHESIZE = SynthesizeOptions(timeout=120.0)
"""What `rillet bench` asks for unless told otherwise: 64 tokens, and a 120 s limit on each request."""


@dataclass(frozen=True)
class Plan:
    """Everything about one request except when it is sent.

    `generate` and `synthesize` are the SDK's own per-request options: what a request asks for is built by the
    SDK's converters, as the SDK would send it (`timeout`: a one-shot call's deadline, a session request's limit).
    """

    workload: Workload = Workload.TEXT
    rpc: Rpc = Rpc.ONESHOT
    prompts: Sequence[str] = BUILTIN_PROMPTS
    prefix_words: int = 0
    generate: GenerateOptions = GENERATE
    synthesize: SynthesizeOptions = SYNTHESIZE

    def __post_init__(self) -> None:
        self.workload.rpc_for(self.rpc)  # refuses a chain over one-shot calls
        if not self.prompts:
            raise ValueError("no prompts")
        if self.generate.max_tokens is not None and self.generate.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")

    def texts(self) -> Iterator[str]:
        """The prompts in turn, forever, each behind the shared prefix when one is asked for."""
        prefix = shared_prefix(self.prefix_words) + "\n" if self.prefix_words else ""
        for prompt in itertools.cycle(self.prompts):
            yield prefix + prompt
