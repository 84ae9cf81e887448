"""What the CPU benchmark sends: its workloads, their defaults for the flags left unset, and their prompts."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields

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


@dataclass(frozen=True)
class Workload:
    """A workload's values for the flags left unset; None: the flag does not apply to it, and giving it is refused.

    Issue 26's prefill-heavy workloads give both sides KV room for their load: 16,384 cells (llama-server's
    `-np 8` slots 2,048 tokens each) for 8 streams of 512-token prompts and for the mixed load, and `-np 1 -c 4096`
    (Rillet: one slot) for one 3,500-token prompt at a time.
    """

    levels: tuple[int, ...] | None = (1, 2, 4, 8, 16)
    context: int = 4096
    slots: int = 8
    rillet_slots: int = 0
    max_tokens: int = 64
    prefix_tokens: int | None = None
    prompt_tokens: int | None = None
    chat_streams: int | None = None
    chat_requests: int | None = None
    chat_tokens: int | None = None
    long_requests: int | None = None


WORKLOADS = {
    "standard": Workload(),
    "shared-prefix": Workload(prefix_tokens=512),
    "distinct-long": Workload(levels=(8,), context=16384, max_tokens=32, prompt_tokens=512),
    "long-prompt": Workload(levels=(1,), context=4096, slots=1, rillet_slots=1, max_tokens=32, prompt_tokens=3500),
    "mixed": Workload(
        levels=None,
        context=16384,
        max_tokens=32,
        prompt_tokens=1500,
        chat_streams=4,
        chat_requests=2,
        chat_tokens=128,
        long_requests=4,
    ),
}
"""`standard`: the 12 short prompts; `shared-prefix`: each behind one system prompt of --prefix-tokens tokens;
`distinct-long` and `long-prompt`: a prompt of --prompt-tokens tokens of its own per request; `mixed`: chat streams
alone, then while --long-requests distinct --prompt-tokens prompts arrive at once (no levels; rillet.bench.cpu.mixed).
"""


def in_process_parser(description: str | None) -> argparse.ArgumentParser:
    """The in-process tools' flags (cpu_bound, engine_steps): the distinct-long work, its defaults from WORKLOADS."""
    load = WORKLOADS["distinct-long"]
    assert load.levels is not None
    assert load.prompt_tokens is not None
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a GGUF (default: the packaged Gemma 3 270M)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--streams", type=int, default=load.levels[0])
    parser.add_argument("--prompt-tokens", type=int, default=load.prompt_tokens)
    parser.add_argument("--max-tokens", type=int, default=load.max_tokens)
    parser.add_argument("--context", type=int, default=load.context)
    parser.add_argument("--tag", default="", help="suffix of the result files")
    return parser


def distinct(workload: str) -> bool:
    """Whether every request of the workload has a prompt of its own (no prefix beyond a few tokens shared)."""
    return WORKLOADS[workload].prompt_tokens is not None


def with_defaults(opts: argparse.Namespace) -> argparse.Namespace:
    """A copy of `opts` with its workload's value for each flag left unset (None); ValueError for a flag it ignores."""
    workload = WORKLOADS[opts.workload]
    resolved = argparse.Namespace(**vars(opts))
    for name in (f.name for f in fields(Workload)):
        given, default = getattr(opts, name), getattr(workload, name)
        if given is not None and default is None:
            raise ValueError(f"--{name.replace('_', '-')} does not apply to the {opts.workload} workload")
        setattr(resolved, name, default if given is None else given)
    resolved.levels = list(resolved.levels or ())  # the mixed load runs its two phases instead of levels
    return resolved


def requests_for(level: int, opts: argparse.Namespace) -> int:
    return max(int(opts.min_requests), int(opts.requests_per_slot) * level)


def fitted(sentences: Iterable[str], count_tokens: Callable[[str], int], tokens: int) -> str:
    """The most leading words of `sentences` whose text (joined by spaces) counts at most `tokens` tokens.

    Takes whole sentences until the text passes `tokens` (or they run out), then searches for the longest prefix
    of words within it.
    """
    words: list[str] = []
    for sentence in sentences:
        words += sentence.split()
        if count_tokens(" ".join(words)) > tokens:
            break
    low, high = 0, len(words)
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if count_tokens(" ".join(words[:mid])) <= tokens else (low, mid - 1)
    return " ".join(words[:low])


def shared_prefix(count_tokens: Callable[[str], int], tokens: int) -> str:
    """A system prompt of at most `tokens` tokens (BOS included), the bakery's sentences over and over."""
    return fitted(itertools.cycle(SYSTEM_PROMPT_SENTENCES), count_tokens, tokens)


def distinct_prompts(count_tokens: Callable[[str], int], tokens: int, count: int) -> tuple[str, ...]:
    """`count` prompts of at most `tokens` tokens (a few fewer where a word would pass it), no two alike.

    Each starts with its own number ("Note 7:") and goes on with the built-in sentences in an order of its own
    (seeded by the number, so every run sends the same), so no prompt cache on either side can reuse more than the
    few tokens before the number (Rillet shares no prefix under 8 tokens).
    """
    sentences = [*PROMPTS, *SYSTEM_PROMPT_SENTENCES]

    def prompt(index: int) -> Iterator[str]:
        rng = random.Random(index)
        yield f"Note {index}:"
        while True:
            yield rng.choice(sentences)

    return tuple(fitted(prompt(index), count_tokens, tokens) for index in range(count))


@contextlib.contextmanager
def token_counter(gguf: str) -> Iterator[Callable[[str], int]]:
    """The model's token count of a text (BOS included, as a server counts a prompt), from its vocabulary alone."""
    from rillet.server.engine.llamacpp import native

    native.init_backend()
    vocab = native.LlamaModel(gguf, vocab_only=True)
    try:
        yield lambda text: len(vocab.tokenize(text, add_special=True, parse_special=False))
    finally:
        vocab.free()


def prompt_count(opts: argparse.Namespace) -> int:
    """How many distinct prompts a sweep sends: one per request of every level, or the mixed load's long ones."""
    if opts.workload == "mixed":
        return int(opts.long_requests)
    return sum(requests_for(level, opts) for level in opts.levels)


def workload_prompts(opts: argparse.Namespace, gguf: str) -> tuple[str, ...]:
    """The prompts requests take (distinct workloads: one per request of a sweep, the same every sweep)."""
    if opts.workload == "standard":
        return PROMPTS
    with token_counter(gguf) as count_tokens:
        if opts.workload == "shared-prefix":
            prefix = shared_prefix(count_tokens, opts.prefix_tokens)
            return tuple(f"{prefix}\n\n{prompt}" for prompt in PROMPTS)
        return distinct_prompts(count_tokens, opts.prompt_tokens, prompt_count(opts))


def level_queue(opts: argparse.Namespace, index: int, sweep: int) -> list[str]:
    """The prompts of the `index`-th level's requests, in order.

    Distinct workloads: the level's own slice of the prompts (no prompt sent twice in a sweep); the others cycle
    through theirs from a point that moves with the sweep.
    """
    count = requests_for(opts.levels[index], opts)
    if distinct(opts.workload):
        start = sum(requests_for(level, opts) for level in opts.levels[:index])
        return list(opts.prompts[start : start + count])
    return [opts.prompts[(sweep * 5 + i) % len(opts.prompts)] for i in range(count)]
