"""One conformance suite, three clients: each language's runner plays scenarios.json against its own `rillet serve`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS_FILE = Path(__file__).with_name("scenarios.json")
SUITE = json.loads(SCENARIOS_FILE.read_text())
SCENARIOS = [s["name"] for s in SUITE["scenarios"]]
TS_RUNNER = ROOT / "client_sdk" / "ts" / "dist" / "conformance" / "runner.js"


def runner_command(language: str) -> tuple[list[str], Path]:
    """How to run a language's runner, and where: each reads --scenarios, --target and --server-pid."""
    if language == "python":
        return [sys.executable, "-m", "tests.conformance.runner"], ROOT
    if language == "go":
        return ["go", "run", "./internal/conformance"], ROOT / "client_sdk" / "go"
    if not TS_RUNNER.exists():
        pytest.fail(f"{TS_RUNNER} is missing: `make test-sdks` (npm ci, then npm test) builds it")
    return ["node", str(TS_RUNNER)], ROOT / "client_sdk" / "ts"


def drain_and_close(stream: IO[bytes]) -> None:
    with stream:
        stream.read()


def start_serve() -> tuple[subprocess.Popen[bytes], int]:
    """A real `rillet serve` as the suite configures it, on a free port; its log is drained in a thread."""
    server = SUITE["server"]
    process = subprocess.Popen(
        [sys.executable, "-m", "rillet.server.cli", "serve", "--port", "0", *server["args"]],
        stderr=subprocess.PIPE,
        env={**os.environ, **server["env"]},
    )
    assert process.stderr is not None
    log: list[bytes] = []
    for line in process.stderr:
        log.append(line)
        if match := re.search(rb"serving .* on [\d.]+:(\d+)", line):
            threading.Thread(target=drain_and_close, args=(process.stderr,), daemon=True).start()
            return process, int(match.group(1))
    raise AssertionError(f"the server never said where it serves: {b''.join(log).decode()}")


@pytest.fixture(scope="module", params=["python", "go", "typescript"])
def results(request: pytest.FixtureRequest) -> tuple[str, dict[str, dict[str, object]]]:
    """Run one language's runner over every scenario (the drain scenario stops the server last)."""
    language = request.param
    command, cwd = runner_command(language)
    process, port = start_serve()
    try:
        run = subprocess.run(
            [*command, "--scenarios", str(SCENARIOS_FILE), "--target", f"127.0.0.1:{port}",
             "--server-pid", str(process.pid)],
            cwd=cwd, capture_output=True, timeout=240,
        )  # fmt: skip
    finally:
        process.terminate()
        process.wait(timeout=30)
    lines = [json.loads(line) for line in run.stdout.decode().splitlines() if line.startswith("{")]
    by_name = {line["scenario"]: line for line in lines}
    if not by_name:
        pytest.fail(f"the {language} runner reported nothing (exit {run.returncode}): {run.stderr.decode()[-4000:]}")
    return language, by_name


@pytest.mark.timeout(300)
@pytest.mark.voice
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(results: tuple[str, dict[str, dict[str, object]]], scenario: str) -> None:
    language, by_name = results
    assert scenario in by_name, f"the {language} runner did not report {scenario}"
    outcome = by_name[scenario]
    assert outcome["passed"], f"{language}, {scenario}: {outcome['detail']}"
