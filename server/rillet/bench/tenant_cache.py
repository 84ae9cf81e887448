"""Does a tenant learn anything of another's prompt from the prefix cache? TTFT and cached tokens, side by side.

One `rillet serve` (llamacpp, the real CPU model) with tenants acme and beta, and gamma and delta in one cache
group. Each round makes a fresh memo (its own opening, so no earlier round's cells help) and measures, in an order
that alternates round by round:
- acme-first: acme sends the memo (nothing cached: the reference);
- beta-same: beta sends the memo's first sentences with another ending (what a prober would send);
- beta-unrelated: beta sends a prompt of the same length that no one sent (the prober's baseline);
- acme-own: acme sends its memo's start again (its own reuse, which must survive);
- delta-group: gamma sends a memo, then delta its start (a group shares by the operator's choice).
TTFT is the server's own `time_to_first_output` (queue + prefill + first token) and the client's first delta.
A leak shows as beta-same/beta-unrelated below 1 or beta's cached tokens above 0.

Run: .venv/bin/python bench/tenant_cache.py [--rounds 12] [--threads 2]
Writes bench/results/tenant_cache_<time>.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from typing import Any

from rillet.bench.procs import RILLET_SERVING, start_server
from rillet.bench.results import write_results
from rillet.bench.stats import spread
from rillet.client import Client, Finished, TokenDelta

TOKENS = {"acme": "acme-bench-1", "beta": "beta-bench-2", "gamma": "gamma-bench-3", "delta": "delta-bench-4"}
TENANTS = {
    "acme": {"tokens": [TOKENS["acme"]]},
    "beta": {"tokens": [TOKENS["beta"]]},
    "gamma": {"tokens": [TOKENS["gamma"]], "cache_group": "northwind"},
    "delta": {"tokens": [TOKENS["delta"]], "cache_group": "northwind"},
}
WORDS = (
    "board", "merger", "quarter", "revenue", "embargo", "counsel", "audit", "pricing", "supplier", "forecast",
    "headcount", "shares", "closing", "tender", "liability", "settlement", "patent", "license", "budget", "region",
)  # fmt: skip
OPENINGS = (
    "Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot", "Golf", "Hotel", "India", "Juliet", "Kilo", "Lima",
    "Mike", "November", "Oscar", "Papa", "Quebec", "Romeo", "Sierra", "Tango", "Uniform", "Victor",
)  # fmt: skip
ARMS = ("acme-first", "beta-same", "beta-unrelated", "acme-own", "delta-group")


def memo(rng: random.Random, opening: str, words: int) -> str:
    body = " ".join(rng.choice(WORDS) for _ in range(words))
    return f"{opening} memo, confidential: {body}."


async def measure(target: str, tenant: str, prompt: str) -> dict[str, float]:
    async with Client.connect(target, token=TOKENS[tenant]) as client:
        start = time.perf_counter()
        first: float | None = None
        finished: Finished | None = None
        async for event in client.generate(prompt, max_tokens=2, temperature=0):
            if isinstance(event, TokenDelta) and first is None and event.token_ids:
                first = time.perf_counter() - start
            elif isinstance(event, Finished):
                finished = event
    assert finished is not None
    assert first is not None
    return {
        "client_ttft_ms": first * 1000,
        "server_ttft_ms": (finished.timings.time_to_first_output_s or 0.0) * 1000,
        "cached": finished.usage.cached_input_tokens,
        "input": finished.usage.input_tokens,
    }


async def one_round(target: str, index: int, words: int) -> dict[str, dict[str, float]]:
    rng = random.Random(index)
    secret = memo(rng, OPENINGS[(2 * index) % len(OPENINGS)] + str(index), words)
    other = memo(rng, OPENINGS[(2 * index + 1) % len(OPENINGS)] + str(index), words)
    group = memo(rng, "Group" + str(index), words)
    cut = secret[: int(len(secret) * 0.8)]
    out = {"acme-first": await measure(target, "acme", secret)}
    probes = [("beta-same", "beta", cut + " and more"), ("beta-unrelated", "beta", other[: len(cut)] + " and more")]
    if index % 2:
        probes.reverse()
    for arm, tenant, prompt in probes:
        out[arm] = await measure(target, tenant, prompt)
    out["acme-own"] = await measure(target, "acme", cut + " and so on")
    await measure(target, "gamma", group)
    out["delta-group"] = await measure(target, "delta", group[: int(len(group) * 0.8)] + " and more")
    return out


async def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--words", type=int, default=60, help="random words per memo (about 1.3 tokens each)")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    env = {
        "RILLET_SECURITY__TENANTS": json.dumps(TENANTS),
        "RILLET_LLAMACPP__N_THREADS": str(args.threads),
        "RILLET_LOG_LEVEL": "INFO",
    }
    command = [sys.executable, "-m", "rillet.server.cli", "serve", "--port", "0", "--text-engine", "llamacpp",
               "--speech-engine", "none"]  # fmt: skip
    server, port = await start_server(command, env, RILLET_SERVING)
    try:
        target = f"127.0.0.1:{port}"
        await measure(target, "acme", "Warm up the engine once before measuring.")
        rounds = [await one_round(target, index, args.words) for index in range(args.rounds)]
    finally:
        server.terminate()
        await server.wait()
    arms: dict[str, Any] = {}
    for arm in ARMS:
        arms[arm] = {key: spread([r[arm][key] for r in rounds]) for key in ("client_ttft_ms", "server_ttft_ms")}
        arms[arm]["cached"] = spread([r[arm]["cached"] for r in rounds])
        arms[arm]["input"] = spread([r[arm]["input"] for r in rounds])
    ratios = {
        name: spread([r[a]["server_ttft_ms"] / r[b]["server_ttft_ms"] for r in rounds])
        for name, a, b in (
            ("beta-same / beta-unrelated", "beta-same", "beta-unrelated"),
            ("acme-own / acme-first", "acme-own", "acme-first"),
            ("delta-group / beta-unrelated", "delta-group", "beta-unrelated"),
        )
    }
    results = {"rounds": args.rounds, "threads": args.threads, "words": args.words, "arms": arms, "ratios": ratios}
    lines = [
        f"# Prefix cache across tenants ({args.rounds} rounds, llamacpp, {args.threads} threads, "
        f"{time.strftime('%Y-%m-%d %H:%M')})",
        "",
        "| arm | cached tokens (median, min-max) | input tokens | server TTFT ms (median, min-max) | client TTFT ms |",
        "|---|---|---|---|---|",
    ]
    for arm in ARMS:
        a = arms[arm]
        lines.append(
            f"| {arm} | {a['cached']['median']:.0f} ({a['cached']['min']:.0f}-{a['cached']['max']:.0f}) | "
            f"{a['input']['median']:.0f} | {a['server_ttft_ms']['median']:.1f} "
            f"({a['server_ttft_ms']['min']:.1f}-{a['server_ttft_ms']['max']:.1f}) | "
            f"{a['client_ttft_ms']['median']:.1f} |"
        )
    lines += ["", "| ratio of server TTFT, per round | median | min-max |", "|---|---|---|"]
    for name, r in ratios.items():
        lines.append(f"| {name} | {r['median']:.2f}x | {r['min']:.2f}-{r['max']:.2f}x |")
    write_results("tenant_cache", results, "\n".join(lines) + "\n", args.tag)


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
