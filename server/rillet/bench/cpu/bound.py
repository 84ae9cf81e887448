"""What llama.cpp's kernels alone take for a workload's work: the ceiling any server on the same kernels can reach.

In one process, with no server, no client and no sampling beyond argmax, it runs the work of `bench_cpu
--workload distinct-long` (the same prompts) in llama-server's schedule: `--streams` prompts prefilled together in
batches of `--batch` tokens (parts of `--ubatch`), then their `--max-tokens` decode steps of one row each, wave
after wave, each sequence in its own KV stream (llama-server -np N) or all in one (`--unified`, Rillet's default).
It also times one `--long-tokens` prompt alone (the long-prompt workload's TTFT), the prompts' prefill alone
in chunks of each `--chunks` size (what a smaller chunk costs a token), and calls of each `--decode-rows` count of
decode rows (each its own sequence holding a prompt): a call's fixed cost and a row's, fitted over them. Tokens/s
of this run is what a server adds nothing to; a server measured at the same threads within a few percent of it is
at the kernels' bound, and no scheduler on these kernels beats it by more than what overlapping client and server
work saves.

Run: .venv/bin/python bench/cpu_bound.py [--threads 1] [--rounds 3]
Writes bench/results/cpu_bound_<time>.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

from rillet.bench.cpu.run import resolve_gguf
from rillet.bench.cpu.workloads import distinct_prompts, in_process_parser, token_counter
from rillet.bench.results import write_results
from rillet.bench.stats import median, spread


def decode_waves(context: Any, prompts: list[list[int]], opts: argparse.Namespace) -> tuple[float, float]:
    """Seconds for all the prompts' prefill and decodes in waves of `streams`; (total, prefill part)."""
    import numpy as np

    total = prefill = 0.0
    for wave_start in range(0, len(prompts), opts.streams):
        wave = prompts[wave_start : wave_start + opts.streams]
        context.clear_memory()
        started = time.perf_counter()
        tokens: dict[int, int] = {}  # each sequence's first token, sampled from its prompt's last row
        pending = [(seq, 0) for seq in range(len(wave))]  # (sequence, tokens already fed)
        while pending:  # prompts packed into batches of `batch` tokens, as llama-server fills n_batch across slots
            context.clear_batch()
            room, carried, outputs = opts.batch, [], {}
            for seq, fed in pending:
                take = min(room, len(wave[seq]) - fed)
                if take > 0:
                    done = fed + take == len(wave[seq])
                    index = context.add(wave[seq][fed : fed + take], fed, seq, output_last=done)
                    if done:
                        outputs[seq] = index
                    room -= take
                if fed + take < len(wave[seq]):
                    carried.append((seq, fed + take))
            _decoded(context)
            tokens.update({seq: int(np.argmax(context.logits(index))) for seq, index in outputs.items()})
            pending = carried
        prefill += time.perf_counter() - started
        for step in range(opts.max_tokens - 1):  # the first token came from the prefill's last row
            context.clear_batch()
            rows = {seq: context.add([tokens[seq]], len(wave[seq]) + step, seq, output_last=True) for seq in tokens}
            _decoded(context)
            tokens = {seq: int(np.argmax(context.logits(index))) for seq, index in rows.items()}
        total += time.perf_counter() - started
    return total, prefill


def decode_calls(context: Any, prompts: list[list[int]], counts: list[int], repeats: int = 3) -> dict[int, float]:
    """Median seconds of one llama_decode of `count` decode rows (one a sequence, each holding its prompt)."""
    context.clear_memory()
    positions: dict[int, int] = {}
    for seq, prompt in enumerate(prompts[: max(counts)]):
        context.clear_batch()
        context.add(prompt, 0, seq, output_last=True)
        _decoded(context)
        positions[seq] = len(prompt)
    seconds: dict[int, float] = {}
    for count in counts:
        times: list[float] = []
        for _ in range(repeats):
            context.clear_batch()
            for seq in range(count):
                context.add([prompts[seq][0]], positions[seq], seq, output_last=True)
                positions[seq] += 1
            started = time.perf_counter()
            _decoded(context)
            times.append(time.perf_counter() - started)
        seconds[count] = median(times)
    return seconds


def fixed_and_per_row(seconds: dict[int, float]) -> tuple[float, float]:
    """Least squares of a call's time on its rows: (fixed seconds, seconds a row); one row count: its time, 0."""
    if len(seconds) < 2:
        return statistics.fmean(seconds.values()), 0.0
    per_row, fixed = statistics.linear_regression(list(seconds), list(seconds.values()))
    return fixed, per_row


def _decoded(context: Any) -> None:
    status = context.decode()
    if status != 0:
        raise RuntimeError(f"llama_decode returned {status}")


@contextlib.contextmanager
def _context(model: Any, opts: argparse.Namespace, **params: Any) -> Iterator[Any]:
    """A llama.cpp context over `model` at the run's threads, `params` the rest of its ContextParams; freed after."""
    from rillet.server.engine.llamacpp import native

    context = native.LlamaContext(model, native.ContextParams(n_threads=opts.threads, **params))
    try:
        yield context
    finally:
        context.free()


def run(opts: argparse.Namespace) -> dict[str, Any]:
    from rillet.server.engine.llamacpp import native

    gguf = resolve_gguf(opts.model)
    native.init_backend()
    with token_counter(gguf) as count:
        texts = distinct_prompts(count, opts.prompt_tokens, opts.requests)
        long_text = distinct_prompts(count, opts.long_tokens, 1)[0]
    model = native.LlamaModel(gguf)
    prompts = [model.tokenize(text, add_special=True, parse_special=False) for text in texts]
    long_prompt = model.tokenize(long_text, add_special=True, parse_special=False)
    results: dict[str, Any] = {"rounds": []}
    try:
        layouts = [("per-stream", False), ("unified", True)]
        for round_index in range(opts.rounds):
            row: dict[str, Any] = {"round": round_index}
            for name, unified in layouts if round_index % 2 == 0 else layouts[::-1]:
                with _context(
                    model, opts, n_ctx=opts.context, n_seq_max=opts.streams, n_batch=opts.batch, n_ubatch=opts.ubatch,
                    kv_unified=unified,
                ) as context:  # fmt: skip
                    seconds, prefill = decode_waves(context, prompts, opts)
                row[name] = {
                    "seconds": round(seconds, 3),
                    "prefill_seconds": round(prefill, 3),
                    "tokens_per_s": round(opts.requests * opts.max_tokens / seconds, 2),
                }
            with _context(
                model, opts, n_ctx=opts.long_context, n_seq_max=1, n_batch=opts.batch, n_ubatch=opts.ubatch,
                kv_unified=False,
            ) as context:  # fmt: skip
                long_opts = argparse.Namespace(**{**vars(opts), "streams": 1, "max_tokens": 1})
                row["long_prompt_ttft_s"] = round(decode_waves(context, [long_prompt], long_opts)[1], 3)
            for chunk in opts.chunks:  # prefill alone in batches of `chunk` tokens: what a smaller chunk costs
                with _context(
                    model, opts, n_ctx=opts.context, n_seq_max=opts.streams, n_batch=chunk,
                    n_ubatch=min(chunk, opts.ubatch), kv_unified=True,
                ) as context:  # fmt: skip
                    chunk_opts = argparse.Namespace(**{**vars(opts), "batch": chunk, "max_tokens": 1})
                    seconds = decode_waves(context, prompts, chunk_opts)[1]
                row[f"prefill_ms_per_token_chunk_{chunk}"] = round(seconds / sum(map(len, prompts)) * 1e3, 3)
            if opts.decode_rows:
                with _context(
                    model, opts, n_ctx=opts.context, n_seq_max=max(opts.decode_rows), n_batch=opts.batch,
                    n_ubatch=opts.ubatch, kv_unified=True,
                ) as context:  # fmt: skip
                    calls = decode_calls(context, prompts, opts.decode_rows)
                row.update({f"decode_call_ms_rows_{count}": round(value * 1e3, 2) for count, value in calls.items()})
                fixed, per_row = fixed_and_per_row(calls)
                row["decode_call_fixed_ms"], row["decode_row_ms"] = round(fixed * 1e3, 2), round(per_row * 1e3, 2)
            results["rounds"].append(row)
            print(row, flush=True)
    finally:
        model.free()
    results["summary"] = {
        "per-stream tokens/s": spread((r["per-stream"]["tokens_per_s"] for r in results["rounds"]), 2),
        "unified tokens/s": spread((r["unified"]["tokens_per_s"] for r in results["rounds"]), 2),
        "long prompt TTFT s": spread((r["long_prompt_ttft_s"] for r in results["rounds"]), 3),
        **{
            f"unified prefill ms a token, chunks of {chunk}": spread(
                (r[f"prefill_ms_per_token_chunk_{chunk}"] for r in results["rounds"]), 3
            )
            for chunk in opts.chunks
        },
        **{
            f"unified decode call ms, {count} rows": spread(
                (r[f"decode_call_ms_rows_{count}"] for r in results["rounds"]), 2
            )
            for count in opts.decode_rows
        },
        **(
            {
                "decode call fixed ms (fit)": spread((r["decode_call_fixed_ms"] for r in results["rounds"]), 2),
                "decode row ms (fit)": spread((r["decode_row_ms"] for r in results["rounds"]), 2),
            }
            if opts.decode_rows
            else {}
        ),
    }
    results["args"] = {k: v for k, v in vars(opts).items()}
    results["load"] = os.getloadavg()[0]
    return results


def report(results: dict[str, Any]) -> str:
    args = results["args"]
    lines = [
        "# llama.cpp kernels alone (bench/cpu_bound.py)",
        "",
        f"{args['requests']} distinct prompts of {args['prompt_tokens']} tokens, {args['max_tokens']} output tokens "
        f"each, {args['streams']} at a time (prefill packed in batches of {args['batch']}, then one decode row per "
        f"sequence a step), {args['threads']} thread(s), {args['context']} cells; one {args['long_tokens']}-token "
        f"prompt alone in {args['long_context']} cells. In-process, argmax sampling, no server. "
        f"{args['rounds']} rounds, load average after: {results['load']:.2f}.",
        "",
        "| figure | median | p10-p90 | min-max |",
        "|---|---|---|---|",
    ]
    for name, values in results["summary"].items():
        lines.append(
            f"| {name} | {values['median']} | {values['p10']}-{values['p90']} | {values['min']}-{values['max']} |"
        )
    return "\n".join(lines) + "\n"


def parse() -> argparse.Namespace:
    parser = in_process_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2048, help="tokens a prefill decode takes (llama-server -b)")
    parser.add_argument("--ubatch", type=int, default=512, help="llama-server -ub")
    parser.add_argument(
        "--chunks", type=int, nargs="*", default=[128, 256, 512], help="prefill chunk sizes to time (unified cache)"
    )
    parser.add_argument(
        "--decode-rows", type=int, nargs="*", default=[1, 2, 4, 8, 16], help="decode calls of these many rows to time"
    )
    parser.add_argument("--long-tokens", type=int, default=3500)
    parser.add_argument("--long-context", type=int, default=4096)
    opts = parser.parse_args()
    if opts.decode_rows and max(opts.decode_rows) > opts.requests:
        parser.error(f"--decode-rows up to {max(opts.decode_rows)} needs as many --requests (prompts to hold)")
    return opts


def main() -> None:
    opts = parse()
    results = run(opts)
    write_results("cpu_bound", results, report(results), *([opts.tag] if opts.tag else []))
