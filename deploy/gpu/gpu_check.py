"""`make gpu-check`: the acceptance run for a GPU host, in one report (deploy/gpu/README.md "Acceptance run").

1. Checks the host: a real TensorRT-LLM (the trtllm extra, or NVIDIA's container), a visible NVIDIA GPU, a model.
2. Runs the engine contract suite (tests/contract) and the `gpu`-marked tests against the real package on that model,
   once per sampler (each decides what the model honours), collecting pass/fail per case from pytest's JUnit XML: the
   stream contract, the sampler facts, and the control plane's (Tokenize as generation reads a prompt, the KV cache
   use from TensorRT-LLM's iteration stats rising under load and falling back).
3. Runs bench/bench_gpu.py: Rillet beside `trtllm-serve` on the same model and settings, the side-by-side table.
4. Writes `gpu_check_<date>.md` (for people) and `.json` (for tools) with the verdict, the environment, every case,
   the table, and what each failure means; exits 0 when all passed and every speed target was met, 1 when something
   failed, 2 when the host cannot run the check at all.

`--double` runs all of it without a GPU, against the TensorRT-LLM test double (tests/doubles/tensorrt_llm): the
contract on the double's cases, bench_gpu.py --double. That is how `make test` exercises this script's logic
(tests/engine/test_trtllm_gpu_check.py); its numbers mean nothing, and its verdict ignores the speed targets.
Usage: python deploy/gpu/gpu_check.py [--model TinyLlama/TinyLlama-1.1B-Chat-v1.0] [--out DIR] [--double]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOUBLES = ROOT / "tests" / "doubles"
DEFAULT_MODEL = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
"""A small public model TensorRT-LLM's own examples use (about 2.2 GB in bf16): any GPU with 8 GB holds it."""
SAMPLERS = ("auto", "TRTLLMSampler")
README = "deploy/gpu/README.md"

MEANINGS = {
    "test_outputs_then_exactly_one_finish": "the stream shape is broken (outputs, then one finish with usage)",
    "test_max_tokens_is_honoured": "TensorRT-LLM generated more or fewer tokens than max_tokens, or usage miscounts",
    "test_closing_the_stream_frees": "closing a stream does not abort the request: its slot and KV leak",
    "test_cancelling_the_consuming_task": "a cancelled consumer does not abort the request: its slot and KV leak",
    "test_a_stop_string": "stop strings are missed, or part of one is streamed",
    "test_text_held_back": "text held back for a possible stop string is lost at the end",
    "test_utf8_characters": "the detokenizer splits a character across deltas (the model's tokenizer differs)",
    "test_bad_sampling": "a meaningless sampling value reached TensorRT-LLM instead of INVALID_ARGUMENT",
    "test_bad_limits": "a bad max_tokens or top_logprobs reached TensorRT-LLM instead of INVALID_ARGUMENT",
    "test_a_prompt_longer_than_the_context": "a too long prompt was not refused before submission",
    "test_seeded_sampling_is_reproducible": "the sampler promises reproducible seeds and broke it: the facts in "
    "tests/doubles/tensorrt_llm/FACTS.md 'Samplers' are wrong for this TensorRT-LLM; run trtllm.sampler=auto",
    "test_a_sampling_field_is_honoured_or_refused": "a sampling field the sampler claims fails, or a refused one "
    "was taken: engine/trtllm/api.py capabilities() disagrees with this TensorRT-LLM",
    "test_logprobs_are_real_or_refused": "a logprob was missing or not the emitted token's: keep top_logprobs "
    "refused under this sampler (api.capabilities) and report the TensorRT-LLM version",
    "test_more_streams_than_slots": "in-flight batching or admission misbehaves past max_batch_size",
    "test_a_constraint_is_enforced_or_refused": "TensorRT-LLM's llguidance backend did not constrain the output (or "
    "llguidance is missing beside it): keep trtllm.guided_decoding_backend=none, which refuses constraints",
    "test_the_real_engine_streams": "the engine cannot stream, cancel or stop on this GPU at all: see its log",
    "test_the_real_samplers_behave": "a sampler fact recorded as unverified in FACTS.md is false here: the "
    "capabilities in engine/trtllm/api.py must change",
    "test_the_real_engine_tokenizes": "Tokenize/Detokenize disagree with what generation reads and streams, or the KV "
    "cache use from TensorRT-LLM's iteration stats did not follow the load: CountTokens or load reports mislead",
}
"""What a failing case means, by the start of its test name (README GPU section and deploy/gpu/README.md say more)."""


@dataclass(frozen=True)
class Case:
    """One test case as pytest reported it."""

    name: str
    outcome: str  # passed, failed, error, skipped
    detail: str = ""

    @property
    def meaning(self) -> str:
        if self.outcome not in ("failed", "error"):
            return ""
        base = self.name.split("::")[-1]
        return next((m for prefix, m in MEANINGS.items() if base.startswith(prefix)), f"see {README}")


def junit_cases(path: Path) -> list[Case]:
    """Every test case of a JUnit XML report, with its outcome and the first line of why it did not pass."""
    cases = []
    for element in ElementTree.parse(path).getroot().iter("testcase"):
        name = f"{element.get('classname', '')}::{element.get('name', '')}"
        outcome, detail = "passed", ""
        for kind in ("failure", "error", "skipped"):
            found = element.find(kind)
            if found is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                lines = (found.get("message") or found.text or "").strip().splitlines()
                detail = lines[0][:200] if lines else ""
                break
        cases.append(Case(name, outcome, detail))
    return cases


def _run(command: Sequence[str], env: dict[str, str], log: Path, timeout: float) -> int:
    with log.open("wb") as sink:
        try:
            return subprocess.run(
                command, env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT
            ).returncode
        except subprocess.TimeoutExpired:
            return 124


def run_tests(opts: argparse.Namespace, sampler: str, out: Path) -> tuple[list[Case], str]:
    """The contract suite and the gpu tests under one sampler; (cases, a note when pytest itself failed)."""
    junit = out / f"tests_{sampler}.xml"
    env = {**os.environ, "RILLET_TRTLLM__SAMPLER": sampler}
    # Constraints are enforced under auto (TensorRT-LLM's llguidance backend) and refused under the other sampler, so
    # the contract's constraint case proves both on the GPU, as the double's two cases do.
    env["RILLET_TRTLLM__GUIDED_DECODING_BACKEND"] = "llguidance" if sampler == "auto" else "none"
    if opts.double:
        case = "trtllm-double and not trtllm-sampler" if sampler == "auto" else "trtllm-double-trtllm-sampler"
        selection = ["tests/contract/test_text_contract.py", "-k", case]  # the double's cases (no gpu test)
    else:
        env["RILLET_TRTLLM__MODEL"] = opts.model
        selection = ["tests/contract", "tests/engine", "-m", "gpu"]
    command = [sys.executable, "-m", "pytest", *selection, "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    status = _run(command, env, out / f"tests_{sampler}.log", opts.test_timeout)
    if not junit.is_file():
        return [], f"pytest exited {status} without a report (see tests_{sampler}.log)"
    cases = junit_cases(junit)
    return cases, "" if cases else f"pytest exited {status} and ran nothing (see tests_{sampler}.log)"


def run_bench(opts: argparse.Namespace, out: Path) -> tuple[dict[str, Any] | None, str]:
    """bench_gpu.py beside trtllm-serve; (its JSON document, a note when it did not produce one)."""
    document = out / "bench_gpu.json"
    command = [
        sys.executable,
        str(ROOT / "bench" / "bench_gpu.py"),
        "--results-dir",
        str(out),
        "--json-out",
        str(document),
        "--concurrency",
        *map(str, opts.concurrency),
        "--requests",
        str(opts.requests),
        "--max-tokens",
        str(opts.max_tokens),
    ]
    command += ["--double"] if opts.double else ["--model", opts.model]
    status = _run(command, dict(os.environ), out / "bench_gpu.log", opts.bench_timeout)
    if not document.is_file():
        return None, f"bench_gpu.py exited {status} without results (see bench_gpu.log)"
    loaded: dict[str, Any] = json.loads(document.read_text())
    return loaded, ""


def _command_output(command: Sequence[str]) -> str:
    if shutil.which(command[0]) is None:
        return ""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def environment(opts: argparse.Namespace) -> dict[str, str]:
    """What ran: versions, GPUs, model. Reads the installed packages' metadata, never imports TensorRT-LLM here."""

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    commit = _command_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    gpus = _command_output(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
    return {
        "rillet": f"{version('rillet')} (git {commit or 'unknown'})",
        "tensorrt_llm": "1.2.1, the test double (tests/doubles)" if opts.double else version("tensorrt-llm"),
        "torch": version("torch"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpus": "none: the test double" if opts.double else "; ".join(gpus.splitlines()) or "unknown (no nvidia-smi)",
        "model": "rillet-double/tiny" if opts.double else opts.model,
    }


def preflight(opts: argparse.Namespace) -> str | None:
    """Why this host cannot run the acceptance run at all, or None."""
    if opts.double:
        return None
    spec = importlib.util.find_spec("tensorrt_llm")
    if spec is None or spec.origin is None or Path(spec.origin).resolve().is_relative_to(DOUBLES):
        return (
            "TensorRT-LLM is not installed: run in NVIDIA's container (deploy/gpu/Dockerfile's base) or "
            '`pip install --extra-index-url https://pypi.nvidia.com -e ".[trtllm,dev]"`'
        )
    if not _command_output(["nvidia-smi", "-L"]):
        return "no NVIDIA GPU is visible (nvidia-smi -L lists none)"
    if importlib.util.find_spec("rillet.server") is None or importlib.util.find_spec("pytest") is None:
        return "Rillet and its test tools are not installed in this Python: pip install -e ./client_sdk -e '.[dev]'"
    return None


def verdict(tests: dict[str, list[Case]], notes: list[str], bench: dict[str, Any] | None, double: bool) -> str:
    failed = [c for cases in tests.values() for c in cases if c.outcome in ("failed", "error")]
    passed = sum(c.outcome == "passed" for cases in tests.values() for c in cases)
    missed = [] if double or bench is None else [c for c in bench["comparisons"] if not c["passed"]]
    if failed or notes or bench is None or missed or not passed:
        return "FAIL"
    return "PASS"


def render(
    stamp: str,
    env: dict[str, str],
    tests: dict[str, list[Case]],
    notes: list[str],
    bench: dict[str, Any] | None,
    bench_markdown: str,
    double: bool,
) -> str:
    """The markdown report (its format is documented in deploy/gpu/README.md "Acceptance run")."""
    result = verdict(tests, notes, bench, double)
    counts = {
        o: sum(c.outcome == o for cases in tests.values() for c in cases)
        for o in ("passed", "failed", "error", "skipped")
    }
    levels = bench["comparisons"] if bench else []
    met = sum(c["passed"] for c in levels)
    title = "TEST DOUBLE run (no GPU; timings mean nothing)" if double else "GPU acceptance run"
    lines = [
        f"# Rillet {title}, {stamp}",
        "",
        f"**Verdict: {result}**. Tests: {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['error']} errors, {counts['skipped']} skipped. Speed targets: "
        + ("not judged on the double" if double else f"met at {met} of {len(levels)} levels")
        + ".",
        "",
        *(f"- {note}" for note in notes),
        *([""] if notes else []),
        "## Environment",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in env.items()),
        "",
        "## Contract suite and gpu tests, per sampler",
        "",
        "| sampler | test | outcome | what a failure means |",
        "|---|---|---|---|",
    ]
    for sampler, cases in tests.items():
        for case in cases:
            detail = f" ({case.detail})" if case.outcome != "passed" and case.detail else ""
            lines.append(f"| {sampler} | `{case.name}` | {case.outcome}{detail} | {case.meaning} |")
    lines += ["", "## Side by side with trtllm-serve (bench/bench_gpu.py)", ""]
    body = bench_markdown.split("\n", 2)[2] if bench_markdown.count("\n") >= 2 else bench_markdown
    lines.append(body.strip() if bench is not None else "Not run: see the note above.")
    lines += ["", f"Logs and raw results are beside this report. What each failure means: {README}.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("RILLET_TRTLLM__MODEL", DEFAULT_MODEL))
    parser.add_argument("--out", type=Path, help="the report's folder (default: bench/results/gpu_check_<date>)")
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--test-timeout", type=float, default=3600.0, help="seconds for each pytest run")
    parser.add_argument("--bench-timeout", type=float, default=7200.0, help="seconds for bench_gpu.py")
    parser.add_argument("--double", action="store_true", help="against the TensorRT-LLM test double: no GPU")
    opts = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    problem = preflight(opts)
    if problem is not None:
        print(f"gpu-check cannot run here: {problem}. See {README}.", file=sys.stderr)
        return 2
    out = opts.out or ROOT / "bench" / "results" / f"gpu_check_{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    env = environment(opts)
    tests: dict[str, list[Case]] = {}
    notes: list[str] = []
    for sampler in opts.samplers:
        print(f"gpu-check: contract and gpu tests, {sampler} sampler ...", flush=True)
        tests[sampler], note = run_tests(opts, sampler, out)
        notes += [f"{sampler}: {note}"] if note else []
    print("gpu-check: bench_gpu.py beside trtllm-serve ...", flush=True)
    bench, note = run_bench(opts, out)
    notes += [note] if note else []
    table = out / f"gpu_{bench['date']}.md" if bench is not None else None
    bench_markdown = table.read_text() if table is not None and table.is_file() else ""
    markdown = render(stamp, env, tests, notes, bench, bench_markdown, opts.double)
    result = verdict(tests, notes, bench, opts.double)
    (out / f"gpu_check_{stamp}.md").write_text(markdown)
    document = {
        "date": stamp,
        "double": opts.double,
        "verdict": result,
        "environment": env,
        "notes": notes,
        "tests": {sampler: [asdict(c) | {"meaning": c.meaning} for c in cases] for sampler, cases in tests.items()},
        "bench": bench,
    }
    (out / f"gpu_check_{stamp}.json").write_text(json.dumps(document, indent=2) + "\n")
    print(markdown)
    print(f"gpu-check: {result}; report {out / f'gpu_check_{stamp}.md'}")
    return 0 if result == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
