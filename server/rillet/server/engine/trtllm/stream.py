"""Pure converters from TensorRT-LLM's cumulative outputs to Rillet's deltas, logprobs and engine timings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rillet.server.engine.text import TextDecoder
from rillet.server.errors import Internal
from rillet.server.reasons import Reason
from rillet.server.types import TokenDelta, TokenLogprob, TokenLogprobs

if TYPE_CHECKING:
    from tensorrt_llm.executor.result import CompletionOutput

MIN_LOGPROB = -9999.0
"""Floor for a logprob: TensorRT-LLM reports masked tokens as -inf (its servers clamp the same way)."""


def clamp_logprob(value: float) -> float:
    return max(float(value), MIN_LOGPROB)


def token_logprobs(
    token_ids: Sequence[int], logprobs: Sequence[Any], start: int, end: int, top: int
) -> tuple[TokenLogprobs, ...]:
    """Rillet's logprobs for `token_ids[start:end]` from either shape TensorRT-LLM returns, aligned by position.

    `logprobs` is cumulative and parallel to `token_ids`: per token a float (the sampled token's logprob), or a dict
    token id -> Logprob(logprob, rank) holding the top candidates. When the list is shorter than the tokens (a
    generation-only request misses the first token's), the missing ones come first and get none. Every value reported
    is one TensorRT-LLM gave: a token its dict does not hold (a top-k under sampling can miss the sampled token) fails
    the request instead (the engine refuses logprobs where that can happen, so this is a broken promise).
    """
    shortfall = max(0, len(token_ids) - len(logprobs))
    out: list[TokenLogprobs] = []
    for i in range(max(start, shortfall), end):
        token = token_ids[i]
        entry = logprobs[i - shortfall]
        if isinstance(entry, dict):
            sampled = entry.get(token)
            if sampled is None:
                raise Internal(
                    f"TensorRT-LLM reported no log-probability for the emitted token {token}",
                    reason=Reason.LOGPROB_MISSING,
                )
            ranked = sorted((e for e in entry.items() if e[1].rank is not None), key=lambda e: e[1].rank)
            alternatives = tuple(TokenLogprob(t, clamp_logprob(lp.logprob)) for t, lp in ranked[:top])
            out.append(TokenLogprobs(TokenLogprob(token, clamp_logprob(sampled.logprob)), alternatives))
        else:
            out.append(TokenLogprobs(TokenLogprob(token, clamp_logprob(entry))))
    return tuple(out)


def engine_timings(output: CompletionOutput) -> tuple[float, float] | None:
    """(engine queue, prefill) seconds from TensorRT-LLM's own request timing, or None without it.

    `request_perf_metrics.timing_metrics` (with `return_perf_metrics`): the queue runs from the executor's arrival to
    the request's first scheduling, the prefill from there to its first token; steady-clock points, so only their
    differences mean anything. A point not yet set is 0.
    """
    timing = getattr(getattr(output, "request_perf_metrics", None), "timing_metrics", None)
    if timing is None:
        return None
    arrival = timing.arrival_time.total_seconds()
    scheduled = timing.first_scheduled_time.total_seconds()
    first = timing.first_token_time.total_seconds()
    if not 0 < arrival <= scheduled <= first:
        return None
    return scheduled - arrival, first - scheduled


class Deltas:
    """Turns one request's cumulative outputs into deltas.

    Invariants: `sent_ids` token ids have been emitted, and they are a prefix of the engine's `token_ids`. Those only
    grow from one response to the next: the one place TensorRT-LLM truncates them is a STOP_WORDS finish (Rillet
    passes no stop words, but `_setup` adds the generation config's extra EOS ids, Llama 3's <|eot_id|>), and it cuts
    the stop word in the same fold that appended it, so never below what an earlier response showed. The text goes
    through `TextDecoder.feed_cumulative` (TensorRT-LLM's `text` is append-only: its incremental detokenizer holds
    back incomplete UTF-8), so what the decoder holds is the only fed text not yet emitted. `token_ids_diff`/
    `text_diff` are never read: with more than one output they are stale (TensorRT-LLM's own gRPC servers compute
    deltas the same way), and a postprocess worker's output replaces the whole CompletionOutput.
    """

    def __init__(self, stop: Sequence[str], top_logprobs: int | None) -> None:
        self._text = TextDecoder(stop)
        self._top = top_logprobs
        self.sent_ids = 0

    def step(self, output: CompletionOutput, final: bool) -> tuple[TokenDelta | None, str | None]:
        """The delta this output adds (None when nothing is new) and the stop string matched, if any."""
        token_ids = output.token_ids
        end = len(token_ids)
        new_ids = tuple(token_ids[self.sent_ids : end])
        logprobs: tuple[TokenLogprobs, ...] = ()
        if self._top is not None and new_ids:
            logprobs = token_logprobs(token_ids, output.logprobs, self.sent_ids, end, self._top)
        self.sent_ids = max(self.sent_ids, end)
        check = self._text.feed_cumulative(output.text)
        emit = check.emit
        if final and check.matched is None:
            emit += self._text.finish().emit  # text in, never bytes: no UTF-8 tail that could complete a stop string
        delta = TokenDelta(emit, new_ids, logprobs) if emit or new_ids else None
        return delta, check.matched
