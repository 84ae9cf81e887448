"""What every soak scenario shares: the options, the server, the tally, the deadline; and the accounting they share."""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import grpc

from rillet.bench.soak.catalog import CHATS, LONG_PROMPT, PROMPTS, SENTENCES, check_undecodable, duration_s
from rillet.bench.soak.tally import Tally
from rillet.bench.wire import Status
from rillet.v1 import common_pb2, generation_pb2


class Soak:
    """The state of one soak's clients (one per load process), and the accounting their scenarios share."""

    def __init__(self, opts: argparse.Namespace, target: str, tally: Tally, *, chat: bool) -> None:
        self.opts = opts
        self.chat = chat  # the default model has a chat template: chat prompts are ordinary requests, else bad input
        self.target = target
        self.tally = tally
        self.deadline = 0.0  # time.monotonic() after which no client starts new work
        self.id_limit: int = opts.request_id_limit
        check_undecodable()

    async def backoff(self, rng: random.Random, status: Status, where: str, attempt: int) -> bool:
        """After RESOURCE_EXHAUSTED: wait its retry hint (doubled per attempt, up to 8x, jittered).

        False when the retry should not happen (the soak is over).
        """
        self.tally.code(status)
        if status.retry_after is None:
            self.tally.violation(f"{where}: RESOURCE_EXHAUSTED without a RetryInfo hint ({status.reason})")
            return False
        if time.monotonic() >= self.deadline:
            self.tally.events["RESOURCE_EXHAUSTED after the soak's end: not retried"] += 1
            return False
        if attempt > self.opts.max_attempts:
            self.tally.events[f"RESOURCE_EXHAUSTED {self.opts.max_attempts} times: given up"] += 1
            return False
        self.tally.events["RESOURCE_EXHAUSTED: retried after retry_after"] += 1
        await asyncio.sleep(status.retry_after * min(2 ** (attempt - 1), 8) * rng.uniform(1.0, 1.5))
        return True

    def count_finished(
        self, label: str, finished: common_pb2.Finished, *, cancel_sent: bool, outputs: int, metric: str
    ) -> None:
        """A request that finished: served (with its server-side latencies), or cancelled (and where it was)."""
        reason = finished.reason
        timings = finished.timings
        if reason == common_pb2.FINISH_REASON_CANCELLED:
            if not cancel_sent:
                self.tally.violation(f"{label}: FINISH_REASON_CANCELLED without a cancel")
                return
            queue, total = duration_s(timings.queue_duration), duration_s(timings.total_duration)
            if outputs:
                where = "decoding" if metric == "TTFT" else "synthesizing"
            elif total - queue < 1e-3:
                where = "queued"
            else:
                where = "admitted, prefilling" if metric == "TTFT" else "admitted, before first audio"
            self.tally.cancelled[f"{label}: {where}"] += 1
            return
        if reason == common_pb2.FINISH_REASON_UNSPECIFIED:
            self.tally.violation(f"{label}: finished without a reason")
            return
        self.tally.served[label] += 1
        if cancel_sent:
            self.tally.events["cancel landed after the request completed"] += 1
        self.tally.latency[f"queue server, {label}"].append(duration_s(timings.queue_duration))
        if timings.HasField("time_to_first_output"):
            self.tally.latency[f"{metric} server, {label}"].append(duration_s(timings.time_to_first_output))

    def expect(self, label: str, status: Status, codes: set[grpc.StatusCode], reason: str) -> None:
        """Bad input answered: with its expected code and reason, or a violation."""
        self.tally.code(status)
        if status.code in codes and status.reason == reason:
            self.tally.bad_input[label] += 1
        else:
            self.tally.violation(f"{label}: got {status.key} ({status.message}), expected {reason}")

    def generate_params(self, rng: random.Random) -> generation_pb2.GenerateParams:
        """A generation of a few tokens: mostly a short prompt, sometimes a long one, sometimes a chat."""
        max_tokens = rng.randint(self.opts.min_tokens, self.opts.max_tokens)
        temperature = rng.choice((0.0, 0.7, 1.0))
        sampling = generation_pb2.SamplingParams(temperature=temperature, seed=rng.randrange(2**32))
        if self.chat and rng.random() < 0.2:
            chat = generation_pb2.ChatPrompt(
                messages=[generation_pb2.ChatMessage(role="user", content=rng.choice(CHATS))]
            )
            return generation_pb2.GenerateParams(chat=chat, max_tokens=max_tokens, sampling=sampling)
        prompt = LONG_PROMPT if rng.random() < 0.05 else rng.choice(PROMPTS)
        return generation_pb2.GenerateParams(text=prompt, max_tokens=max_tokens, sampling=sampling)


def connect(target: str) -> grpc.aio.Channel:
    """A channel with a TCP connection of its own (gRPC shares one per target by default): closing it disconnects."""
    return grpc.aio.insecure_channel(target, options=(("grpc.use_local_subchannel_pool", 1),))


def speech_text(rng: random.Random) -> str:
    """One or two sentences to speak."""
    return " ".join(rng.sample(SENTENCES, rng.randint(1, 2)))
