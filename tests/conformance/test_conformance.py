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
SESSION_OPS = {"generate", "synthesize", "append_text", "end_input", "cancel", "half_close", "await_output",
               "expect_finished", "expect_error", "expect_rejected", "expect_call_end", "drain"}  # fmt: skip
SESSION_SCENARIOS = [s["name"] for s in SUITE["scenarios"] if all(step["op"] in SESSION_OPS for step in s["steps"])]
"""The scenarios of sessions alone: the WebSocket edge serves the Session RPC (one-shot calls are gRPC's)."""
TS_RUNNER = ROOT / "client_sdk" / "ts" / "dist" / "conformance" / "runner.js"
LANGUAGES = ["python", "go", "typescript", "typescript-websocket"]


def runner_command(language: str) -> tuple[list[str], Path]:
    """How to run a language's runner, and where: each reads --scenarios, --target and --server-pid."""
    if language == "python":
        return [sys.executable, "-m", "tests.conformance.runner"], ROOT
    if language == "go":
        return ["go", "run", "./internal/conformance"], ROOT / "client_sdk" / "go"
    if not TS_RUNNER.exists():
        pytest.fail(f"{TS_RUNNER} is missing: `make test-sdks` (npm ci, then npm test) builds it")
    return ["node", *node_websocket_flag(), str(TS_RUNNER)], ROOT / "client_sdk" / "ts"


def node_websocket_flag() -> list[str]:
    """Node 20 has its standard WebSocket class behind a flag (22 and later: on by default)."""
    probe = subprocess.run(["node", "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"], check=False)
    return [] if probe.returncode == 0 else ["--experimental-websocket"]


def drain_and_close(stream: IO[bytes]) -> None:
    with stream:
        stream.read()


def start_serve() -> tuple[subprocess.Popen[bytes], int, str]:
    """A real `rillet serve` as the suite configures it, on free ports (gRPC, and the WebSocket edge's URL)."""
    server = SUITE["server"]
    process = subprocess.Popen(
        [sys.executable, "-m", "rillet.server.cli", "serve", "--port", "0", "--websocket-port", "0", *server["args"]],
        stderr=subprocess.PIPE,
        env={**os.environ, **server["env"]},
    )
    assert process.stderr is not None
    log: list[bytes] = []
    websocket = ""
    for line in process.stderr:
        log.append(line)
        if match := re.search(rb"websocket edge on (ws://\S+)", line):
            websocket = match.group(1).decode()
        if match := re.search(rb"serving .* on [\d.]+:(\d+)", line):
            threading.Thread(target=drain_and_close, args=(process.stderr,), daemon=True).start()
            return process, int(match.group(1)), websocket
    raise AssertionError(f"the server never said where it serves: {b''.join(log).decode()}")


@pytest.fixture(scope="module", params=LANGUAGES)
def results(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, dict[str, dict[str, object]]]:
    """Run one language's runner over every scenario (the drain scenario stops the server last).

    `typescript-websocket` is the TypeScript runner with its sessions on the WebSocket edge (`--websocket`): the
    session scenarios, with the same expectations as over gRPC.
    """
    language = request.param
    command, cwd = runner_command(language.removesuffix("-websocket"))
    scenarios, extra = SCENARIOS_FILE, []
    process, port, websocket = start_serve()
    if language.endswith("-websocket"):
        scenarios = tmp_path_factory.mktemp("conformance") / "sessions.json"
        sessions = [s for s in SUITE["scenarios"] if s["name"] in SESSION_SCENARIOS]
        scenarios.write_text(json.dumps({**SUITE, "scenarios": sessions}))
        extra = ["--websocket", websocket]
    try:
        run = subprocess.run(
            [*command, "--scenarios", str(scenarios), "--target", f"127.0.0.1:{port}",
             "--server-pid", str(process.pid), *extra],
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
    if language.endswith("-websocket") and scenario not in SESSION_SCENARIOS:
        pytest.skip("a one-shot RPC: the WebSocket edge serves sessions")
    assert scenario in by_name, f"the {language} runner did not report {scenario}"
    outcome = by_name[scenario]
    assert outcome["passed"], f"{language}, {scenario}: {outcome['detail']}"
