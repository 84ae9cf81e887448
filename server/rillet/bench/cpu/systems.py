"""The systems the CPU benchmark compares (Rillet and its peers, prompt cache on or off), run as servers."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from rillet.bench.procs import free_port, stop, wait_healthy
from rillet.bench.results import BIN, BUILD
from rillet.server.config import LlamaCppConfig

SYSTEMS = ("rillet", "rillet-nocache", "llama-server", "llama-server-nocache", "llama_cpp.server")
PEERS = {"rillet": "llama-server", "rillet-nocache": "llama-server-nocache"}
"""Each Rillet variant's like-for-like llama-server variant (same prompt-cache setting)."""


def base(system: str) -> str:
    """The server a system variant runs: rillet, llama-server or llama_cpp.server."""
    return system.removesuffix("-nocache")


def cached(system: str) -> bool:
    """Whether the variant runs with its prompt cache on."""
    return not system.endswith("-nocache")


RILLET_PREFILL = ("prefill_batch", "prefill_ubatch", "decode_stretch", "prefill_budget")
"""Rillet's prefill settings (LlamaCppConfig), recorded with every run: issue 26 compares them before and after."""


def rillet_prefill(env: Mapping[str, str]) -> dict[str, str]:
    """The prefill settings a Rillet server started with `env` runs with: each one's variable there, or its default."""
    fields = LlamaCppConfig.model_fields
    return {name: env.get(f"RILLET_LLAMACPP__{name.upper()}", str(fields[name].default)) for name in RILLET_PREFILL}


def amx_offered() -> bool:
    """Whether llama.cpp would put weights in AMX buffers here.

    They crash it (llama.cpp#20824), so llama-server then runs with --no-repack (extra buffer types off), as Rillet
    turns them off itself.
    """
    from rillet.server.engine.llamacpp import native

    return "AMX" in native.cpu_extra_buffer_types()


@dataclass(frozen=True)
class Server:
    name: str
    pid: int
    port: int


def _wait_http(process: subprocess.Popen[bytes], url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} while starting")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f} s")


@contextlib.contextmanager
def start_server(name: str, opts: argparse.Namespace, gguf: str, log: Path) -> Iterator[Server]:
    """Start one system on a free loopback port; stop it (SIGTERM, then kill) on exit."""
    port = free_port()
    env = dict(os.environ)
    env.update(opts.server_env)
    threads = str(opts.threads)
    if base(name) == "rillet":
        env.update(
            {
                "RILLET_HOST": "127.0.0.1",
                "RILLET_TEXT_ENGINE": "llamacpp",
                "RILLET_SPEECH_ENGINE": "none",
                "RILLET_LLAMACPP__MODEL_PATH": gguf,
                "RILLET_LLAMACPP__MODEL_NAME": "gemma-3-270m",
                "RILLET_LLAMACPP__N_THREADS": threads if opts.rillet_threads is None else str(opts.rillet_threads),
                "RILLET_LLAMACPP__SLOTS": str(opts.rillet_slots),
                "RILLET_LLAMACPP__CONTEXT_LENGTH": str(opts.context),
                "RILLET_LOG_LEVEL": "WARNING",
            }
        )
        if not cached(name):
            env["RILLET_LLAMACPP__PREFIX_CACHE"] = "0"
        command = [str(BIN / "rillet"), "serve", "--port", str(port)]
    elif base(name) == "llama-server":
        command = [
            str(BUILD / "llama-server"),
            *("-m", gguf, "-np", str(opts.slots), "-t", threads, "-tb", threads, "-c", str(opts.context)),
            *("--host", "127.0.0.1", "--port", str(port), "--no-webui"),
            *(("--no-repack",) if amx_offered() else ()),
            *(("--kv-unified",) if opts.peer_kv_unified else ()),
        ]
    else:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(opts.peer_site), env.get("PYTHONPATH", "")) if p)
        command = [
            sys.executable,
            *("-m", "llama_cpp.server", "--model", gguf, "--n_threads", threads, "--n_threads_batch", threads),
            *("--n_ctx", str(opts.context), "--interrupt_requests", "False"),
            *("--host", "127.0.0.1", "--port", str(port)),
        ]
    with log.open("ab") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        if base(name) == "rillet":
            wait_healthy(f"127.0.0.1:{port}", 180)
        else:
            path = "/health" if base(name) == "llama-server" else "/v1/models"
            _wait_http(process, f"http://127.0.0.1:{port}{path}", 180)
        yield Server(name, process.pid, port)
    finally:
        stop(process)
