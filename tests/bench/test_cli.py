"""The `rillet bench` command: its arguments, chain's RPC, and what it prints in a pipe (80 columns, nothing cut)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rillet.bench.loadgen.cli import concurrency_levels
from rillet.bench.loadgen.report import columns
from rillet.bench.loadgen.workload import Rpc, Workload
from rillet.server.cli import app
from rillet.server.config import SyntheticConfig
from rillet.server.engine.synthetic import SyntheticEngine
from tests.bench.test_loadgen import SPOKEN
from tests.conftest import ServerFactory
from tests.doubles import EchoSpeechEngine


def test_concurrency_levels() -> None:
    assert concurrency_levels(None, None) == [1, 4, 16, 64]
    assert concurrency_levels(None, [5.0]) == []  # rates alone: no closed loop
    assert concurrency_levels("2,8", [5.0]) == [2, 8]
    with pytest.raises(ValueError, match="whole numbers"):
        concurrency_levels("1,x", None)
    with pytest.raises(ValueError, match="at least 1"):
        concurrency_levels("0", None)


def test_a_chain_runs_in_sessions_unless_told_otherwise() -> None:
    assert Workload.CHAIN.rpc_for(None) is Rpc.SESSION
    assert Workload.TEXT.rpc_for(None) is Rpc.ONESHOT
    assert Workload.SPEECH.rpc_for(Rpc.SESSION) is Rpc.SESSION
    with pytest.raises(ValueError, match="sessions only"):
        Workload.CHAIN.rpc_for(Rpc.ONESHOT)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--workload", "chain", "--rpc", "oneshot"], "runs in sessions only"),
        (["--concurrency", "1,x"], "whole numbers"),
        (["--workload", "poetry"], "'poetry' is not a valid Workload"),
        (["--max-tokens", "0"], "max_tokens must be at least 1"),
        (["--prompts", "/no/such/file"], "No such file"),
    ],
)
def test_bad_arguments_are_refused_before_connecting(arguments: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["bench", "--target", "127.0.0.1:1", *arguments])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


async def bench(target: str, *arguments: str) -> tuple[bytes, bytes, int]:
    environment = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}  # a pipe: rich's 80 columns
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rillet.server.cli", "bench", "--target", target, "--warmup", "0", "--no-progress",
        *arguments, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=environment,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return stdout, stderr, process.returncode


async def test_in_a_pipe_it_writes_json_and_a_plot_and_prints_every_figure_whole(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    server = await make_server([SyntheticEngine(SyntheticConfig(tokens_per_second=0, first_output_delay_s=0.0))])
    output = tmp_path / "run.json"
    stdout, stderr, status = await bench(
        f"127.0.0.1:{server.port}", "--concurrency", "1,2", "--requests", "6", "--max-tokens", "5",
        "--output", str(output),
    )  # fmt: skip
    assert status == 0, stderr.decode()
    results = json.loads(output.read_text())
    assert [lvl["tokens"] for lvl in results["levels"]] == [30, 30]
    assert output.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = stdout.decode()
    assert "…" not in printed
    assert max(len(line) for line in printed.splitlines()) <= 80
    for _, cells in columns(results):
        for cell in cells:
            assert cell in printed


async def test_a_chain_without_rpc_runs_in_sessions(make_server: ServerFactory, tmp_path: Path) -> None:
    server = await make_server([SyntheticEngine(SPOKEN), EchoSpeechEngine()])
    output = tmp_path / "chain.json"
    _, stderr, status = await bench(
        f"127.0.0.1:{server.port}", "--workload", "chain", "--concurrency", "2", "--requests", "4",
        "--max-tokens", "4", "--no-plot", "--output", str(output),
    )  # fmt: skip
    assert status == 0, stderr.decode()
    results = json.loads(output.read_text())
    assert results["plan"]["rpc"] == "session"
    [level] = results["levels"]
    assert (level["requests"], level["ok"], level["lost"], level["failed"]) == (8, 8, 0, 0), level["errors"]
