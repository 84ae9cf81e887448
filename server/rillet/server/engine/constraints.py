"""Output constraints through llguidance: each constraint's grammar, its bounded and cached compilation, its errors.

Why llguidance (../shared/research/fleet-constraints-2026-12.md): its token mask costs ≈0.02 ms a step on Gemma's
262k vocabulary (llama.cpp's GBNF sampler ≈23 ms), it builds its tokenizer from llama.cpp's own vocabulary (no
Hugging Face files, no torch), and TensorRT-LLM 1.2.1 takes it as `guided_decoding_backend="llguidance"` on the
PyTorch backend, so the CPU and GPU engines share one semantics (JSON Schema, Rust-syntax regex, Lark grammars).
xgrammar would bring torch and transformers into the CPU server.

A constraint becomes an llguidance grammar (`grammar`); `check` validates one without a tokenizer, and a `Checker`
does so off the event loop, bounded and cached, for an engine whose library compiles the grammar itself (trtllm:
`choice_lark` is the one kind TensorRT-LLM has no field for); a `Compiler` makes a fresh matcher per request for one
tokenizer, off the event loop, within llguidance's work limits and a wall-clock bound, caching a pristine matcher per
grammar so that a pipeline sending the same schema pays its compilation once (a request gets a copy: ≈10 µs).
llguidance never raises for a bad grammar: errors come back as text, which becomes INVALID_ARGUMENT here.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import json
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from rillet.server.errors import InvalidArgument, clip
from rillet.server.reasons import Reason
from rillet.server.types import Constraint, ConstraintKind

if TYPE_CHECKING:  # imported lazily: a server without a constrained engine never loads it
    from llguidance import LLMatcher, LLParserLimits, LLTokenizer
    from llguidance._lib import JsonCompileOptions

__all__ = [
    "COMPILE_TIMEOUT_S",
    "Checker",
    "Compiler",
    "check",
    "choice_lark",
    "constraint_error",
    "enforceable",
    "grammar",
]

T = TypeVar("T")

COMPILE_TIMEOUT_S = 5.0
"""A compilation still running after this long fails CONSTRAINT_TOO_COMPLEX (llguidance's fuel bounds its work)."""

ERROR_CHARS = 400
"""How much of llguidance's error text (which quotes the client's grammar) a message repeats."""

JSON_OPTIONS: JsonCompileOptions = {"whitespace_pattern": r"(?: |\n{1,2}[ \t]{0,20})"}
"""How JSON is spelled (llguidance's JsonCompileOptions, as defaults a schema's own "x-guidance" overrides): between
tokens at most a space, or one or two line breaks and an indentation of up to 20 (llama.cpp's json-schema-to-grammar
rule). Unbounded whitespace, llguidance's default, lets a small model that wanted a token the schema forbids fill
its max_tokens with blank lines, a prefix that never closes."""

_LIMIT_WORDS = ("fuel", "limit", "too many", "too large", "too big", "max_")
"""Words of llguidance's errors that mean a work limit was hit rather than a mistake in the constraint."""


def enforceable() -> frozenset[ConstraintKind]:
    """The kinds an engine that matches tokens with llguidance enforces: every kind where it is installed, else none."""
    if importlib.util.find_spec("llguidance") is None:
        return frozenset()
    return frozenset(ConstraintKind)


def grammar(constraint: Constraint) -> str:
    """The llguidance grammar for `constraint` (not yet checked: `check` or a Compiler does that)."""
    from llguidance import LLMatcher

    kind = constraint.kind
    if kind is ConstraintKind.JSON_SCHEMA:
        try:
            schema = json.loads(constraint.text)
        except ValueError as error:
            raise InvalidArgument(
                f"json_schema is not JSON: {error}", field="params.json_schema", reason=Reason.CONSTRAINT_INVALID
            ) from None
        if not isinstance(schema, dict | bool):
            raise InvalidArgument(
                "json_schema must be a JSON object (or true/false)",
                field="params.json_schema",
                reason=Reason.CONSTRAINT_INVALID,
            )
        return LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_OPTIONS)
    if kind is ConstraintKind.JSON_OBJECT:
        return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_OPTIONS)
    if kind is ConstraintKind.REGEX:
        return LLMatcher.grammar_from_regex(constraint.text)
    if kind is ConstraintKind.GRAMMAR:
        return LLMatcher.grammar_from_lark(constraint.text)
    return LLMatcher.grammar_from_lark(choice_lark(constraint.choices))


def choice_lark(choices: Sequence[str]) -> str:
    """A choice as a Lark grammar: one rule of string literals (JSON's string escapes are Lark's)."""
    return "start: " + " | ".join(json.dumps(option) for option in choices)


def constraint_error(constraint: Constraint, message: str) -> InvalidArgument:
    """The InvalidArgument a client sees for llguidance's error `message` about `constraint`."""
    lowered = message.lower()
    too_complex = any(word in lowered for word in _LIMIT_WORDS)
    reason = Reason.CONSTRAINT_TOO_COMPLEX if too_complex else Reason.CONSTRAINT_INVALID
    what = "exceeds the constraint compiler's work limits" if too_complex else "is not valid"
    return InvalidArgument(
        f"{constraint.kind.value} {what}: {clip(message.strip(), ERROR_CHARS)}",
        field=f"params.{constraint.kind.value}",
        reason=reason,
    )


def check(constraint: Constraint, limits: LLParserLimits | None = None) -> None:
    """Raise InvalidArgument if `constraint` does not parse (no tokenizer: what can be known before one is used)."""
    _validate(constraint, grammar(constraint), limits)


def _validate(constraint: Constraint, text: str, limits: LLParserLimits | None) -> None:
    from llguidance import LLMatcher

    message = LLMatcher.validate_grammar(text, None, limits=limits)
    if message:
        raise constraint_error(constraint, message)


async def _bounded(constraint: Constraint, work: Callable[[], T], timeout_s: float) -> T:
    """`work` in a worker thread; CONSTRAINT_TOO_COMPLEX once it outlives `timeout_s` (it finishes within its fuel)."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(work), timeout_s)
    except TimeoutError:
        raise InvalidArgument(
            f"{constraint.kind.value} took over {timeout_s:g} s to compile",
            field=f"params.{constraint.kind.value}",
            reason=Reason.CONSTRAINT_TOO_COMPLEX,
        ) from None


class Checker:
    """Constraints validated without a tokenizer, off the event loop, bounded and cached by grammar.

    For an engine whose library compiles the grammar itself (TensorRT-LLM's llguidance backend, in its executor): a
    constraint that passes here is one llguidance parses, so a bad one is INVALID_ARGUMENT before submission and never
    reaches the executor. Invariants: a grammar that validated is remembered (at most `cache_size`, least recently
    used dropped first) and passes at once after that; a bad one is validated again each time; validation runs in a
    worker thread, and one outliving `timeout_s` fails CONSTRAINT_TOO_COMPLEX. Used from one event loop.
    """

    def __init__(
        self, *, cache_size: int = 256, timeout_s: float = COMPILE_TIMEOUT_S, limits: LLParserLimits | None = None
    ) -> None:
        self._cache_size = cache_size
        self._timeout_s = timeout_s
        self._limits = limits
        self._valid: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.validated = 0  # validations run (cache misses), for tests and benchmarks

    async def check(self, constraint: Constraint) -> None:
        """Return when `constraint` is one llguidance accepts; InvalidArgument when it is bad or too costly."""
        text = grammar(constraint)
        if text in self._valid:
            self._valid.move_to_end(text)
            return
        self.validated += 1
        await _bounded(constraint, lambda: _validate(constraint, text, self._limits), self._timeout_s)
        self._valid[text] = None
        while len(self._valid) > self._cache_size:
            self._valid.popitem(last=False)


class Compiler:
    """Fresh llguidance matchers for one tokenizer, compiled off the event loop, bounded and cached by grammar.

    Invariants: a matcher handed out is never handed out again (each request gets its own copy of the cached,
    never-advanced original); the cache holds at most `cache_size` grammars, least recently used dropped first;
    compilation runs in a worker thread (llguidance releases the GIL while it builds) and a request whose
    compilation outlives `timeout_s` fails CONSTRAINT_TOO_COMPLEX while the thread finishes within llguidance's fuel.
    Thread-safe.
    """

    def __init__(
        self,
        tokenizer: Callable[[], LLTokenizer],
        *,
        cache_size: int = 64,
        timeout_s: float = COMPILE_TIMEOUT_S,
        limits: LLParserLimits | None = None,
    ) -> None:
        self._make_tokenizer = tokenizer
        self._tokenizer: LLTokenizer | None = None
        self._cache_size = cache_size
        self._timeout_s = timeout_s
        self._limits = limits
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict[str, LLMatcher] = collections.OrderedDict()
        self.compiled = 0  # grammars compiled (cache misses), for tests and benchmarks

    @property
    def tokenizer(self) -> LLTokenizer:
        """The tokenizer, built on first use (for llama.cpp's vocabulary, 1-3 s: engines build it while warming)."""
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = self._make_tokenizer()
            return self._tokenizer

    async def matcher(self, constraint: Constraint) -> LLMatcher:
        """A matcher of its own for one request; InvalidArgument when the constraint is bad or too costly."""
        text = grammar(constraint)
        with self._lock:
            cached = self._cache.get(text)
            if cached is not None:
                self._cache.move_to_end(text)
                return cached.deep_copy()
        return await _bounded(constraint, lambda: self._compile(constraint, text), self._timeout_s)

    def _compile(self, constraint: Constraint, text: str) -> LLMatcher:
        from llguidance import LLMatcher

        original = LLMatcher(self.tokenizer, text, limits=self._limits, log_level=0)
        if original.is_error():
            raise constraint_error(constraint, original.get_error())
        with self._lock:
            self.compiled += 1
            self._cache[text] = original
            self._cache.move_to_end(text)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return original.deep_copy()
