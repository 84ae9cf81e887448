"""The synthetic TEST engine: deterministic words from a batched step loop, for tests and overhead benchmarks only."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import zlib
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

from rillet.server.config import SyntheticConfig
from rillet.server.engine.base import TextEvent
from rillet.server.engine.constraints import Compiler, enforceable
from rillet.server.engine.lifecycle import EngineLifecycle, State, closed_error
from rillet.server.engine.prompt import PromptPolicy
from rillet.server.engine.text import TextDecoder, check_request
from rillet.server.errors import Internal, InvalidArgument, Unavailable
from rillet.server.observer import StepReporter
from rillet.server.reasons import Reason
from rillet.server.types import (
    GREEDY_BELOW_TEMPERATURE,
    ChatMessage,
    EngineFinished,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    ModelKind,
    Prompt,
    TextCapabilities,
    TokenDelta,
    TokenLogprob,
    TokenLogprobs,
    Usage,
)

if TYPE_CHECKING:
    from llguidance import LLMatcher, LLTokenizer

ENGINE_NAME = "synthetic"
CAPABILITIES = TextCapabilities(sampling=frozenset({"temperature", "seed"}), reproducible_seed=True)
"""What the test engine honours: a seed (ignored when greedy, as the proto says) and logprobs of its own made-up
distribution. Its words do not come from a distribution, so top_p, top_k, min_p and the penalty are refused. Output
constraints are added where llguidance is installed (`capabilities`)."""


def greedy(request: GenerationRequest) -> bool:
    """Whether the request decodes greedily (its seed then plays no part)."""
    return request.sampling.temperature < GREEDY_BELOW_TEMPERATURE


VOCABULARY = (
    "the", "river", "runs", "quietly", "past", "a", "mill", "where", "light", "falls", "on", "stone", "and",
    "water", "turns", "slowly", "under", "old", "bridge", "while", "birds", "sing", "of", "morning", "in",
    "green", "fields", "beyond", "hills", "with", "rain", "clouds", "café", "naïve", "über", "日本", "🦩",
)  # fmt: skip
"""The words the engine emits, one per token; the last five are multibyte in UTF-8 (2, 3 and 4 bytes a character)."""


BYTE_TOKENS = len(VOCABULARY)
"""Token BYTE_TOKENS + b is the byte b: a constrained output spells with them what no word does."""
END_TOKEN = BYTE_TOKENS + 256
"""Ends a constrained output (never emitted, never counted): the matcher allows it once it accepts."""
VOCABULARY_SIZE = END_TOKEN + 1
"""The token ids: the words, the 256 bytes, the end token."""
MAX_WORDS_IN_A_ROW = 8
"""A constrained stream takes its own word at most this often in a row; then the matcher's other choices come first
(so a free-text string in a JSON schema closes, as a model's would)."""
_CLOSERS = b'"}]'
_PREFERENCE = tuple(
    BYTE_TOKENS + b
    for b in (*_CLOSERS, *(b for b in range(256) if b not in _CLOSERS and b not in b" \t\r\n"), *b" \t\r\n")
)
"""The bytes a constrained stream takes when its word is not allowed: a closing `"` `}` `]` first, whitespace last."""


def capabilities() -> TextCapabilities:
    """CAPABILITIES, with every constraint kind where llguidance is installed (the cpu extra has it)."""
    return dataclasses.replace(CAPABILITIES, constraints=enforceable())


def token_bytes(token: int) -> bytes:
    """What a token spells: a word and its space, a byte, or nothing (the end token)."""
    if token < BYTE_TOKENS:
        return (VOCABULARY[token] + " ").encode()
    return bytes([token - BYTE_TOKENS]) if token < END_TOKEN else b""


class _Spelling:
    """The vocabulary as llguidance's TokenizerWrapper reads it (a text is spelled in bytes)."""

    eos_token_id = END_TOKEN
    bos_token_id = None
    tokens: ClassVar[list[bytes]] = [token_bytes(t) for t in range(END_TOKEN)] + [b"<end>"]
    special_token_ids: ClassVar[list[int]] = [END_TOKEN]

    def __call__(self, text: bytes) -> list[int]:
        return [BYTE_TOKENS + b for b in text]


def guidance_tokenizer() -> LLTokenizer:
    """The vocabulary as llguidance sees it (294 tokens: built in well under a millisecond)."""
    from llguidance import LLTokenizer, TokenizerWrapper

    return LLTokenizer(TokenizerWrapper(_Spelling()))


class _Guide:
    """One constrained stream's matcher, and the synthetic model's pick among the tokens it allows.

    The pick, deterministic: the stream's own word when allowed (at most MAX_WORDS_IN_A_ROW in a row), else the end
    token once the matcher accepts, else the first allowed byte of _PREFERENCE. The token is fed to the matcher.
    """

    def __init__(self, matcher: LLMatcher) -> None:
        self._matcher = matcher
        self._words = 0

    def pick(self, word: int) -> int:
        allowed = int.from_bytes(self._matcher.compute_bitmask(), "little")
        if allowed >> word & 1 and self._words < MAX_WORDS_IN_A_ROW:
            self._words += 1
            token = word
        elif allowed >> END_TOKEN & 1:
            token = END_TOKEN
        else:
            self._words = 0
            token = next((t for t in _PREFERENCE if allowed >> t & 1), END_TOKEN)
        if not self._matcher.consume_token(token):
            raise Internal(f"the constraint's matcher refused the token it allowed: {self._matcher.get_error()}")
        return token


_WORD_IDS = {word: index for index, word in enumerate(VOCABULARY)}


def synthetic_token(seed: int, index: int) -> int:
    """The token id at position `index` of the deterministic stream for `seed`."""
    return (seed + 7 * index) % len(VOCABULARY)


def prompt_seed(prompt: Prompt, seed: int | None = None) -> int:
    """A stable seed from the prompt, so the same prompt always yields the same text."""
    return zlib.crc32(repr(prompt).encode()) + (seed or 0)


def synthetic_text(prompt: Prompt, tokens: int, seed: int | None = None) -> str:
    """The text the engine emits for `prompt` over `tokens` tokens (what tests compare streams against)."""
    start = prompt_seed(prompt, seed)
    return "".join(VOCABULARY[synthetic_token(start, i)] + " " for i in range(tokens))


@dataclass(eq=False, slots=True)
class _Stream:
    """One request inside the step loop: what it has produced that its consumer has not taken yet.

    Everything here is touched only on the event loop that runs the step loop (no locks needed).
    """

    seed: int
    max_tokens: int
    top_logprobs: int | None
    prompt_tokens: int
    decoder: TextDecoder
    submitted: float  # perf_counter at `stream`
    ready_at: float  # loop.time() when its prefill is over: it joins the first step at or after this
    guide: _Guide | None = None  # a constrained stream's matcher: its tokens are the ones the constraint allows
    produced: int = 0
    prefill: float | None = None  # from `stream` to joining the batch: its simulated prefill (nothing queues here)
    texts: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    end: EngineFinished | Unavailable | None = None
    waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def take(self) -> list[TextEvent]:
        """Everything produced since the last take: one coalesced delta, then the terminal event if there is one."""
        events: list[TextEvent] = []
        if self.ids or self.texts:
            events.append(TokenDelta("".join(self.texts), tuple(self.ids), tuple(self.logprobs)))
            self.texts.clear()
            self.ids.clear()
            self.logprobs.clear()
        return events


MAX_CATCH_UP_STEPS = 64
"""A paced step loop that finds itself late runs the steps that fell due, up to this many at once."""


class SyntheticEngine(EngineLifecycle):
    """A TEST engine shaped like a real batched one: one step loop gives one token to every running request per step.

    The step loop is a task on the serving event loop (its per-step work is a table lookup per request, cheaper
    than the hop to a thread that real engines take; it never blocks). Each step takes the requests whose prefill
    (`first_output_delay_s`) is over into the batch, then produces one token for each running request and wakes its
    consumer. Steps run `tokens_per_second` times a second (each running request's token rate) on the engine's own
    clock: when the event loop was busy, the steps that fell due meanwhile run together (MAX_CATCH_UP_STEPS), as a
    GPU engine keeps stepping whatever the serving path does. At 0 steps run back to back, one per event-loop
    iteration. A consumer that falls behind takes everything produced since its last take as one delta. Idle, the
    loop sleeps until a request arrives and steps at once.

    Output is deterministic: `synthetic_text(prompt, n, seed)` is what a request's deltas spell out. Having nothing
    to load, it serves from construction; `start` only binds the step loop to its event loop early.

    Output constraints are enforced for real where llguidance is installed, so the serving path can be measured with
    them: each is compiled off the loop and cached (`constraints.Compiler`, over `guidance_tokenizer`'s view of the
    words plus 256 byte tokens and an end token), and each step a constrained stream takes its word only when the
    matcher allows it, else the matcher's end, else an allowed byte (`_Guide`); it finishes STOP at the end token.
    What it writes is a string the constraint accepts, or a prefix of one at max_tokens, never a language model's.
    """

    def __init__(self, config: SyntheticConfig) -> None:
        self._capabilities = capabilities()
        model = ModelInfo(
            name=config.model_name,
            kind=ModelKind.TEXT_GENERATION,
            engine=ENGINE_NAME,
            description="TEST ENGINE: deterministic synthetic words from a batched step loop; not a language model",
            is_test_engine=True,
            context_length=config.context_length,
            capabilities=self._capabilities,
        )
        super().__init__(ENGINE_NAME, (model,), config.slots, state=State.SERVING)
        self._config = config
        self._policy = PromptPolicy(vocab_size=VOCABULARY_SIZE, context_length=config.context_length)
        self.compiler = Compiler(guidance_tokenizer)  # constraints, compiled on first use and cached by their text
        self._prefilling: list[_Stream] = []
        self._running: dict[_Stream, None] = {}  # ordered set: the batch, in arrival order
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.steps = 0  # steps run since start (a figure for benchmarks: tokens per step = batch size)
        self.step_reporter = StepReporter()  # observer.Batching: every step's batch size, for telemetry

    @property
    def serves(self) -> Literal[ModelKind.TEXT_GENERATION]:
        return ModelKind.TEXT_GENERATION

    async def start(self) -> None:
        self._ensure_loop()

    async def aclose(self) -> None:
        """Stop the step loop; streams still in flight end with UNAVAILABLE (SHUTTING_DOWN)."""
        self._mark_closed()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for stream in [*self._prefilling, *self._running]:
            stream.end = closed_error(ENGINE_NAME)
            stream.wake()
        self._prefilling.clear()
        self._running.clear()

    def stream(self, request: GenerationRequest) -> AsyncGenerator[TextEvent, None]:
        return self._generate(request)

    def tokenize(self, model: str, prompt: str | tuple[ChatMessage, ...]) -> list[int]:
        """base.Tokenizing: one token per whitespace-separated word, as a text prompt is counted for its usage.

        A word of VOCABULARY is its index; any other word a stable index from its CRC-32 (a TEST tokenizer: text of
        other words does not come back from `detokenize`). The model has no chat template, so chat is refused.
        """
        if not isinstance(prompt, str):
            raise InvalidArgument(
                "this model has no chat template; send a text prompt", field="chat", reason=Reason.CHAT_TEMPLATE_MISSING
            )
        return [_WORD_IDS.get(word, zlib.crc32(word.encode()) % len(VOCABULARY)) for word in prompt.split()]

    def detokenize(self, model: str, token_ids: Sequence[int]) -> str:
        """base.Tokenizing: what the ids spell as the engine streams them; ids are checked as a prompt's.

        A word id spells its word and a space, a byte id its byte, the end token nothing; bytes that form no
        character are replaced.
        """
        self._policy.check_ids(token_ids)
        return b"".join(token_bytes(token) for token in token_ids).decode("utf-8", errors="replace")

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        """The step loop runs on the event loop of the first caller (start, or a stream before it)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._loop = loop
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._step_loop(loop, self._wake), name="rillet-synthetic-steps")
        elif self._loop is not loop:
            raise RuntimeError("the synthetic engine serves one event loop")
        return loop

    async def _generate(self, request: GenerationRequest) -> AsyncGenerator[TextEvent, None]:
        check_request(request, self._capabilities)
        prompt_tokens = self._count_prompt(request)
        self.check_serving()
        loop = self._ensure_loop()
        guide = None if request.constraint is None else _Guide(await self.compiler.matcher(request.constraint))
        stream = _Stream(
            seed=prompt_seed(request.prompt, None if greedy(request) else request.sampling.seed),
            max_tokens=request.max_tokens,
            top_logprobs=request.top_logprobs,
            prompt_tokens=prompt_tokens,
            decoder=TextDecoder(request.stop),
            submitted=time.perf_counter(),
            ready_at=loop.time() + self._config.first_output_delay_s,
            guide=guide,
        )
        self._prefilling.append(stream)
        self._active += 1
        assert self._wake is not None
        self._wake.set()
        try:
            while True:
                events = stream.take()
                end = stream.end
                if end is not None:
                    for event in events:
                        yield event
                    if isinstance(end, Unavailable):
                        raise end
                    yield end
                    return
                if events:
                    yield events[0]
                    continue
                stream.waiter = loop.create_future()
                await stream.waiter
                stream.waiter = None
        finally:
            self._active -= 1
            if stream.end is None:  # closed or cancelled mid-stream: out of the batch at once
                self._running.pop(stream, None)
                if stream in self._prefilling:
                    self._prefilling.remove(stream)

    async def _step_loop(self, loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> None:
        rate = self._config.tokens_per_second
        interval = 1.0 / rate if rate > 0 else 0.0
        next_step = loop.time()
        while True:
            if not self._running and not self._prefilling:
                wake.clear()
                await wake.wait()
                next_step = loop.time()  # idle: step as soon as a request arrives
            now = loop.time()
            if self._prefilling:
                self._admit(now)
                if not self._running:  # only prefills in progress: sleep until the first is over
                    first = min(s.ready_at for s in self._prefilling)
                    await asyncio.sleep(max(0.0, first - now))
                    next_step = loop.time()
                    continue
            if not interval:
                self._step()
                await asyncio.sleep(0)
                continue
            # Every step that fell due since the last visit runs now, as an engine on its own clock would have run
            # them while the event loop was busy; their tokens reach each consumer together (coalesced).
            due = min(MAX_CATCH_UP_STEPS, max(1, int((now - next_step) / interval) + 1))
            for _ in range(due):
                if not self._running:
                    break
                self._step()
            next_step += due * interval
            if next_step < now - interval:  # further behind than the catch-up covers: the schedule slips
                next_step = now
            await asyncio.sleep(max(0.0, next_step - loop.time()))

    def _admit(self, now: float) -> None:
        ready = [s for s in self._prefilling if s.ready_at <= now]
        if ready:
            self._prefilling = [s for s in self._prefilling if s.ready_at > now]
            started = time.perf_counter()
            for stream in ready:
                stream.prefill = started - stream.submitted
                self._running[stream] = None

    def _step(self) -> None:
        """One token for every running request: the only loop over the batch."""
        self.steps += 1
        self.step_reporter.step(len(self._running))
        finished: list[_Stream] = []
        for stream in self._running:
            token = synthetic_token(stream.seed, stream.produced)
            if stream.guide is None:
                check = stream.decoder.feed(VOCABULARY[token] + " ")
            else:
                token = stream.guide.pick(token)
                if token == END_TOKEN:  # the constraint's output is complete: the end token is not emitted
                    self._finish(stream, FinishReason.STOP)
                    finished.append(stream)
                    stream.wake()
                    continue
                check = stream.decoder.feed_bytes(token_bytes(token))
            stream.produced += 1
            if check.emit:
                stream.texts.append(check.emit)
            stream.ids.append(token)  # its id counts, even with no text left (a stop string's last token)
            if stream.top_logprobs is not None:
                stream.logprobs.extend(self._logprobs(token, stream.top_logprobs))
            if check.matched is not None:
                self._finish(stream, FinishReason.STOP_SEQUENCE, check.matched)
                finished.append(stream)
            elif stream.produced == stream.max_tokens:
                self._finish(stream, FinishReason.LENGTH)
                finished.append(stream)
            stream.wake()
        for stream in finished:
            del self._running[stream]

    @staticmethod
    def _finish(stream: _Stream, reason: FinishReason, matched: str | None = None) -> None:
        """End a stream: what its decoder still holds goes out first, unless that completes a stop string."""
        if matched is None:
            tail = stream.decoder.finish()  # an incomplete UTF-8 tail (bytes in) may complete a stop string
            if tail.emit:
                stream.texts.append(tail.emit)
            if tail.matched is not None:
                reason, matched = FinishReason.STOP_SEQUENCE, tail.matched
        usage = Usage(input_tokens=stream.prompt_tokens, output_tokens=stream.produced)
        stream.end = EngineFinished(reason, usage, matched or "", prefill_seconds=stream.prefill)

    def _count_prompt(self, request: GenerationRequest) -> int:
        """The prompt's tokens: a text's words, a chat's messages, token ids (checked against the vocabulary).

        A text of whitespace alone counts 0 and is served, as a real tokenizer's BOS token would have it served.
        """
        prompt = request.prompt
        if isinstance(prompt, str):
            count = len(prompt.split())
        else:
            count = len(prompt)
            self._policy.check_ids([t for t in prompt if isinstance(t, int)])
        self._policy.check_length(count, request.max_tokens)
        return count

    @staticmethod
    def _logprobs(token: int, top: int | None) -> tuple[TokenLogprobs, ...]:
        if top is None:
            return ()
        alternatives = tuple(TokenLogprob((token + k) % len(VOCABULARY), -0.5 * (k + 1)) for k in range(top))
        return (TokenLogprobs(TokenLogprob(token, -0.5), alternatives),)
