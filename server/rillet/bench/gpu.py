"""GPU benchmark: Rillet's trtllm engine against `trtllm-serve` (TensorRT-LLM's OpenAI server), side by side.

Same model, GPU and TensorRT-LLM settings for both (max_batch_size, max_num_tokens, max_seq_len, KV fraction, block
reuse, chunked prefill, capacity policy, tensor parallelism); greedy decoding and the same prompts, so both generate
the same tokens. Per concurrency level (a closed loop of that many streams): output tokens/s, client-side TTFT
p50/p99 and inter-token latency p50/p99 (a delta covering k tokens counts k gaps of 1/k). Rillet is driven through its
SDK (gRPC), trtllm-serve through /v1/completions with SSE. The target (README, deploy/gpu/README.md): Rillet's tokens/s
at least 0.95x trtllm-serve's and its TTFT p99 at most 1.1x, at every level up to 256.

Needs a GPU host with TensorRT-LLM 1.2 (NVIDIA's release container has it: deploy/gpu/Dockerfile) and a local model.
Run: python bench/bench_gpu.py --model /models/Qwen2.5-7B-Instruct [--concurrency 1 8 32 64 128 256]
Results: bench/results/gpu_<date>.json and .md (or --results-dir). `make gpu-check` runs it after the contract suite.
`--double` runs the same logic with no GPU: Rillet over the TensorRT-LLM test double (bench/serve_trtllm_double.py)
beside a trtllm-serve stand-in over the same double (bench/trtllm_serve_double.py); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from rillet.bench.procs import free_port
from rillet.bench.results import RESULTS
from rillet.bench.stats import median, percentile
from rillet.client import Client, Finished

TOKENS_RATIO_TARGET = 0.95
TTFT_P99_RATIO_TARGET = 1.1
PROMPTS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator works to a ten-year-old.",
    "List the steps to bake a loaf of sourdough bread, with timings.",
    "Describe the history of the printing press in a few paragraphs.",
    "What are the trade-offs between tensor and pipeline parallelism when serving language models?",
    "Summarize the plot of a detective novel set in a small mountain village.",
)


DOUBLE_MODEL = "rillet-double/tiny"


def preflight(tensor_parallel: int) -> None:
    """Stop at once, with what to do, when this host cannot run TensorRT-LLM on enough GPUs."""
    from rillet.server.engine.trtllm import INSTALL_HELP

    try:
        from tensorrt_llm.llmapi.utils import get_device_count
    except Exception as exc:
        sys.exit(f"bench_gpu.py needs TensorRT-LLM and an NVIDIA GPU. {INSTALL_HELP} (import failed: {exc})")
    devices = get_device_count()
    if devices < tensor_parallel:
        sys.exit(f"bench_gpu.py needs {tensor_parallel} visible CUDA GPUs; this host shows {devices}. {INSTALL_HELP}")


@dataclass
class Sample:
    """One request as the client saw it."""

    ttft: float
    gaps: list[float]
    tokens: int


@dataclass
class Level:
    """One concurrency level of one system."""

    system: str
    concurrency: int
    requests: int
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    errors: int = 0


@dataclass
class Comparison:
    concurrency: int
    tokens_ratio: float
    ttft_p99_ratio: float
    passed: bool
    levels: list[Level] = field(default_factory=list)


Generate = Callable[[str], Awaitable[Sample]]


def rillet_generate(client: Client, max_tokens: int) -> Generate:
    async def generate(prompt: str) -> Sample:
        started = time.perf_counter()
        last = started
        ttft: float | None = None
        gaps: list[float] = []
        tokens = 0
        async for event in client.generate(prompt, max_tokens=max_tokens, temperature=0.0):
            now = time.perf_counter()
            if isinstance(event, Finished):
                break
            count = len(event.token_ids)
            if count == 0:
                continue
            if ttft is None:
                ttft = now - started
            else:
                gaps.extend([(now - last) / count] * count)
            tokens += count
            last = now
        return Sample(ttft if ttft is not None else time.perf_counter() - started, gaps, tokens)

    return generate


def openai_generate(http: httpx.AsyncClient, model: str, max_tokens: int) -> Generate:
    async def generate(prompt: str) -> Sample:
        body = {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        started = time.perf_counter()
        last = started
        ttft: float | None = None
        gaps: list[float] = []
        chunks = 0
        usage_tokens: int | None = None
        async with http.stream("POST", "/v1/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                payload = json.loads(line[6:])
                if payload.get("usage"):
                    usage_tokens = payload["usage"].get("completion_tokens")
                choices = payload.get("choices") or []
                if not choices or not choices[0].get("text"):
                    continue
                now = time.perf_counter()
                if ttft is None:
                    ttft = now - started
                else:
                    gaps.append(now - last)
                chunks += 1
                last = now
        return Sample(ttft if ttft is not None else time.perf_counter() - started, gaps, usage_tokens or chunks)

    return generate


async def run_level(system: str, generate: Generate, concurrency: int, requests: int) -> Level:
    samples: list[Sample] = []
    errors = 0
    queue = list(range(requests))

    async def worker() -> None:
        nonlocal errors
        while queue:
            index = queue.pop()
            try:
                samples.append(await generate(PROMPTS[index % len(PROMPTS)]))
            except Exception:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ttfts = [s.ttft for s in samples]
    gaps = [g for s in samples for g in s.gaps]
    return Level(
        system=system,
        concurrency=concurrency,
        requests=len(samples),
        tokens_per_s=round(sum(s.tokens for s in samples) / elapsed, 1),
        ttft_p50_ms=round(percentile(ttfts, 50) * 1000, 1),
        ttft_p99_ms=round(percentile(ttfts, 99) * 1000, 1),
        itl_p50_ms=round(percentile(gaps, 50) * 1000, 2),
        itl_p99_ms=round(percentile(gaps, 99) * 1000, 2),
        errors=errors,
    )


def llm_api_options(opts: argparse.Namespace) -> dict[str, object]:
    """The settings both systems get (trtllm-serve through --extra_llm_api_options, Rillet through its config)."""
    return {
        "enable_chunked_prefill": opts.chunked_prefill,
        "kv_cache_config": {"free_gpu_memory_fraction": opts.kv_fraction, "enable_block_reuse": opts.block_reuse},
        "scheduler_config": {"capacity_scheduler_policy": opts.capacity_policy},
        "sampler_type": opts.sampler,
    }


def double_peer_command(opts: argparse.Namespace, port: int) -> list[str]:
    """The trtllm-serve stand-in over the test double, with the same LLM settings trtllm-serve would get."""
    limits = {"max_batch_size": opts.max_batch_size, "max_num_tokens": opts.max_num_tokens}
    options = llm_api_options(opts) | limits | {"max_seq_len": opts.max_seq_len}
    step = str(opts.step_seconds)
    return [
        sys.executable,
        "-m",
        "rillet.bench.trtllm_serve_double",
        "--port",
        str(port),
        "--step-seconds",
        step,
        "--llm-args",
        json.dumps(options),
    ]


@contextlib.contextmanager
def process(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=30)


async def wait_ready(check: Callable[[], Awaitable[bool]], proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} while loading (see its log)")
        with contextlib.suppress(Exception):
            if await check():
                return
        await asyncio.sleep(2.0)
    raise RuntimeError("the server did not become ready")


@contextlib.asynccontextmanager
async def trtllm_serve(opts: argparse.Namespace, log: Path) -> AsyncIterator[Generate]:
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as options:
        json.dump(llm_api_options(opts), options)  # JSON is YAML
    command = [
        "trtllm-serve",
        opts.model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend",
        "pytorch",
        "--tp_size",
        str(opts.tp),
        "--max_batch_size",
        str(opts.max_batch_size),
        "--max_num_tokens",
        str(opts.max_num_tokens),
        "--max_seq_len",
        str(opts.max_seq_len),
        "--kv_cache_free_gpu_memory_fraction",
        str(opts.kv_fraction),
        "--extra_llm_api_options",
        options.name,
    ]
    if opts.double:
        command = double_peer_command(opts, port)
    with process(command, dict(os.environ), log) as proc:
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600, limits=limits) as http:

            async def ready() -> bool:
                return (await http.get("/health")).status_code == 200

            await wait_ready(ready, proc, opts.load_timeout)
            yield openai_generate(http, opts.model, opts.max_tokens)
    os.unlink(options.name)


@contextlib.asynccontextmanager
async def rillet_serve(opts: argparse.Namespace, log: Path) -> AsyncIterator[Generate]:
    port = free_port()
    env = {
        **os.environ,
        "RILLET_PORT": str(port),
        "RILLET_TEXT_ENGINE": "trtllm",
        "RILLET_SPEECH_ENGINE": "none",
        "RILLET_TRTLLM__MODEL": DOUBLE_MODEL if opts.double else opts.model,
        "RILLET_TRTLLM__TENSOR_PARALLEL_SIZE": str(opts.tp),
        "RILLET_TRTLLM__MAX_BATCH_SIZE": str(opts.max_batch_size),
        "RILLET_TRTLLM__MAX_NUM_TOKENS": str(opts.max_num_tokens),
        "RILLET_TRTLLM__MAX_SEQ_LEN": str(opts.max_seq_len),
        "RILLET_TRTLLM__FREE_GPU_MEMORY_FRACTION": str(opts.kv_fraction),
        "RILLET_TRTLLM__ENABLE_BLOCK_REUSE": str(opts.block_reuse).lower(),
        "RILLET_TRTLLM__ENABLE_CHUNKED_PREFILL": str(opts.chunked_prefill).lower(),
        "RILLET_TRTLLM__CAPACITY_SCHEDULER_POLICY": opts.capacity_policy,
        "RILLET_TRTLLM__SAMPLER": opts.sampler,
        "RILLET_SCHEDULER__MAX_QUEUE": str(max(opts.concurrency)),
        "RILLET_LIMITS__MAX_TOKENS": str(max(opts.max_tokens, 128)),
    }
    command = [sys.executable, "-m", "rillet.server.cli", "serve"]
    if opts.double:  # `import tensorrt_llm` finds the test double in that process
        stats = str(log.with_suffix(".double.json"))
        step = str(opts.step_seconds)
        command = [
            sys.executable,
            "-m",
            "rillet.bench.trtllm_double",
            "--step-seconds",
            step,
            "--stats-out",
            stats,
            "--",
            "serve",
        ]
    with process(command, env, log) as proc:
        async with Client.connect(f"127.0.0.1:{port}") as client:

            async def ready() -> bool:
                return bool(await client.list_models())

            await wait_ready(ready, proc, opts.load_timeout)
            yield rillet_generate(client, opts.max_tokens)


async def sweep(opts: argparse.Namespace, stamp: str) -> list[Comparison]:
    levels: dict[str, list[Level]] = {}
    for system, serve in (("trtllm-serve", trtllm_serve), ("rillet", rillet_serve)):
        log = opts.results_dir / f"gpu_{stamp}_{system}.log"
        async with serve(opts, log) as generate:
            await run_level(system, generate, 4, 8)  # warm both the same way before measuring
            levels[system] = []
            for concurrency in opts.concurrency:
                level = await run_level(system, generate, concurrency, max(opts.requests, 2 * concurrency))
                print(json.dumps(asdict(level)), flush=True)
                levels[system].append(level)
    comparisons = []
    for peer, ours in zip(levels["trtllm-serve"], levels["rillet"], strict=True):
        tokens_ratio = ours.tokens_per_s / peer.tokens_per_s if peer.tokens_per_s else 0.0
        ttft_ratio = ours.ttft_p99_ms / peer.ttft_p99_ms if peer.ttft_p99_ms else float("inf")
        passed = tokens_ratio >= TOKENS_RATIO_TARGET and ttft_ratio <= TTFT_P99_RATIO_TARGET and not ours.errors
        comparisons.append(
            Comparison(ours.concurrency, round(tokens_ratio, 3), round(ttft_ratio, 3), passed, [peer, ours])
        )
    return comparisons


def report(comparisons: Sequence[Comparison], opts: argparse.Namespace, stamp: str) -> str:
    title = "TEST DOUBLE, no GPU: the numbers mean nothing" if opts.double else "GPU"
    lines = [
        f"# {title}: Rillet (trtllm engine) vs trtllm-serve, {stamp}",
        "",
        f"Model `{DOUBLE_MODEL if opts.double else opts.model}`, {opts.sampler} sampler, TP {opts.tp}, "
        f"max_batch_size {opts.max_batch_size}, max_num_tokens "
        f"{opts.max_num_tokens}, max_seq_len {opts.max_seq_len}, KV {opts.kv_fraction}, block reuse "
        f"{opts.block_reuse}, chunked prefill {opts.chunked_prefill}, {opts.capacity_policy}; greedy, "
        f"{opts.max_tokens} tokens per request. Target: tokens/s ratio >= {TOKENS_RATIO_TARGET}, TTFT p99 ratio <= "
        f"{TTFT_P99_RATIO_TARGET}.",
        "",
        "| streams | tok/s trtllm-serve | tok/s Rillet | ratio | TTFT p50/p99 ms trtllm-serve | TTFT p50/p99 ms Rillet "
        "| p99 ratio | ITL p50/p99 ms trtllm-serve | ITL p50/p99 ms Rillet | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        peer, ours = c.levels
        lines.append(
            f"| {c.concurrency} | {peer.tokens_per_s} | {ours.tokens_per_s} | {c.tokens_ratio} | "
            f"{peer.ttft_p50_ms}/{peer.ttft_p99_ms} | {ours.ttft_p50_ms}/{ours.ttft_p99_ms} | {c.ttft_p99_ratio} | "
            f"{peer.itl_p50_ms}/{peer.itl_p99_ms} | {ours.itl_p50_ms}/{ours.itl_p99_ms} | "
            f"{'met' if c.passed else 'MISSED'} |"
        )
    return "\n".join(lines) + "\n"


def options(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="local Hugging Face checkpoint directory (or a hub id); not with --double")
    parser.add_argument("--tp", type=int, default=1, help="tensor parallel size")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64, 128, 256])
    parser.add_argument("--requests", type=int, default=64, help="requests per level (at least 2x its concurrency)")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--max-batch-size", type=int, default=256)
    parser.add_argument("--max-num-tokens", type=int, default=8192)
    parser.add_argument("--max-seq-len", type=int, default=4096)
    parser.add_argument("--kv-fraction", type=float, default=0.9)
    parser.add_argument("--block-reuse", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--chunked-prefill", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--capacity-policy", default="GUARANTEED_NO_EVICT")
    parser.add_argument("--sampler", default="auto", choices=["auto", "TorchSampler", "TRTLLMSampler"])
    parser.add_argument("--load-timeout", type=float, default=1800.0, help="seconds a server may take to load")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the report and logs go")
    parser.add_argument("--json-out", type=Path, help="the JSON document's path (default: in --results-dir)")
    parser.add_argument("--double", action="store_true", help="both systems over the test double: no GPU needed")
    parser.add_argument("--step-seconds", type=float, default=0.002, help="--double: one step of the double")
    opts = parser.parse_args(argv)
    if not opts.double and not opts.model:
        parser.error("--model is required (or --double)")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; 0 when every level met its target (or with --double, when every level ran)."""
    opts = options(argv)
    if not opts.double:
        preflight(opts.tp)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    opts.results_dir.mkdir(parents=True, exist_ok=True)
    comparisons = asyncio.run(sweep(opts, stamp))
    document = {
        "date": stamp,
        "double": opts.double,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()},
        "comparisons": [asdict(c) for c in comparisons],
    }
    json_out = opts.json_out or opts.results_dir / f"gpu_{stamp}.json"
    json_out.write_text(json.dumps(document, indent=2) + "\n")
    markdown = report(comparisons, opts, stamp)
    (opts.results_dir / f"gpu_{stamp}.md").write_text(markdown)
    print(markdown)
    ratios = [c.tokens_ratio for c in comparisons]
    met = all(c.passed for c in comparisons)
    print(f"median tokens/s ratio {median(ratios):.3f}; every level met: {met}")
    ran = all(not level.errors for c in comparisons for level in c.levels)
    return 0 if (ran if opts.double else met) else 1


if __name__ == "__main__":
    sys.exit(main())
