"""The Go load client, client_sdk/go/internal/streamload: built once per run, driven, its JSON read back.

It stays in Go because it measures what no Python client can on these 2-core machines: it spends a few µs of CPU
per message where a grpc.aio client spends 30-50, so 512 paced sessions or 256 streams at 20k tokens/s are not
timed by a client whose own CPU sets the gaps. Its checks are those of the verifying raw client (rillet.bench.wire:
seq without a gap, one terminal message and last, counts equal to the usage) written in Go, and its percentiles
follow rillet.bench.stats' one definition (its percentile_test.go holds it to the Python tests' cases).
"""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from rillet.bench.results import ROOT


def build(directory: Path) -> Path:
    """Build the client (with the Go toolchain `make tools` uses) into `directory`."""
    go = shutil.which("go")
    if go is None:
        raise SystemExit("the Go client needs Go on PATH (the one `make test` uses); or run with --client python")
    binary = directory / "streamload"
    source = ROOT / "client_sdk" / "go"
    subprocess.run([go, "build", "-o", str(binary), "./internal/streamload"], cwd=source, check=True)
    return binary


@functools.cache
def binary() -> Path:
    """The client, built once per process."""
    return build(Path(tempfile.mkdtemp(prefix="rillet-streamload-")))


def command(target: str, **flags: Any) -> list[str]:
    """Its command line: `-address=target` and one `-name=value` per flag (max_tokens: -max-tokens)."""
    return [str(binary()), f"-address={target}", *(f"-{k.replace('_', '-')}={v}" for k, v in flags.items())]


async def run(target: str, **flags: Any) -> dict[str, Any]:
    """One run against `target`; its JSON (counts, window tokens, gap and TTFT percentiles, its own CPU)."""
    process = await asyncio.create_subprocess_exec(*command(target, **flags), stdout=asyncio.subprocess.PIPE)
    stdout, _ = await process.communicate()
    if process.returncode:
        raise RuntimeError(f"streamload exited with {process.returncode}")
    result: dict[str, Any] = json.loads(stdout)
    return result
