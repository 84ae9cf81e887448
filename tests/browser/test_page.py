"""The demo page in a real browser: Debian's Chromium driven by playwright-core (client_sdk/ts/e2e/page.ts).

The server runs here, in process, with the WebSocket edge serving the page; the driver loads it in headless
Chromium, does what a person would (type, Send, Speak, Stop) and prints what the page showed; these tests judge
that and what the server saw. `make test` installs Chromium (apt-get) and builds the driver (npm).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rillet.server.app import RilletServer
from rillet.server.config import Settings, SyntheticConfig
from rillet.server.engine.synthetic import SyntheticEngine
from rillet.server.transport.websocket import SESSION_PATH, EdgeConnection
from tests.conftest import eventually
from tests.doubles import ToneSpeechEngine
from tests.unit.test_session import Recorder

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "client_sdk" / "ts" / "dist" / "e2e" / "page.js"


class Outcomes(Recorder):
    """A Recorder of every request's lifecycle (by request id) that hears the edge too: its sessions and refusals."""

    def __init__(self) -> None:
        super().__init__()
        self.refused_with: list[int] = []
        self.sessions = 0

    def ended(self, request_id: str) -> str:
        """How the request ended ("finished length", "cancelled cancelled", ...); "" while it runs."""
        last = self.events.get(request_id, [""])[-1]
        return last if last.startswith(("finished", "cancelled", "failed")) else ""

    def session(self, connection: EdgeConnection) -> Outcomes:
        self.sessions += 1
        return self

    def end(self, status: str) -> None:
        return None

    def refused(self, status: int) -> None:
        self.refused_with.append(status)


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("Chromium is missing: `make test` installs Debian's (apt-get install chromium)")
    if not DRIVER.exists():
        pytest.fail(f"{DRIVER} is missing: `make test-sdks` (npm ci, then npm test) builds it")
    return found


Served = tuple[RilletServer, Outcomes, str]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    outcomes = Outcomes()
    text = SyntheticEngine(SyntheticConfig(tokens_per_second=20.0, first_output_delay_s=0.0))
    settings = Settings(port=0, websocket={"enabled": True, "port": 0, "page": True})
    server = RilletServer(settings, [text, ToneSpeechEngine()], observer=outcomes, edge_observer=outcomes)
    await server.start()
    assert server.websocket is not None
    try:
        yield server, outcomes, f"http://127.0.0.1:{server.websocket.port}/"
    finally:
        await server.stop(grace_s=0)


async def drive(chromium: str, url: str, scenario: str) -> dict[str, Any]:
    """Run the driver on `scenario` (the server keeps serving on this loop meanwhile); the facts it printed."""
    process = await asyncio.create_subprocess_exec(
        "node", str(DRIVER), "--url", url, "--scenario", scenario, "--chromium", chromium,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 90)
    lines = [line for line in stdout.decode().splitlines() if line.startswith("{")]
    assert lines, f"the driver printed nothing (exit {process.returncode}): {stderr.decode()[-3000:]}"
    facts: dict[str, Any] = json.loads(lines[-1])
    assert "failed" not in facts, facts["failed"]
    assert facts["pageErrors"] == []
    return facts


@pytest.mark.timeout(120)
async def test_the_page_streams_an_answer_in_several_visible_updates(chromium: str, served: Served) -> None:
    _server, outcomes, url = served
    facts = await drive(chromium, url, "stream")
    turn = facts["turn"]
    assert turn["tokens"] == 24
    assert facts["updatesBeforeFinish"] >= 2, facts  # words appear while the answer is still being generated
    assert turn["firstToken"] < turn["finished"]
    assert facts["readouts"]["tokens"] == "24"
    assert facts["readouts"]["status"] == "length"
    assert facts["readouts"]["ttft"].endswith("ms)")  # the browser's TTFT, then the server's in brackets
    assert float(facts["readouts"]["tps"]) > 0
    assert facts["answer"]
    await eventually(lambda: outcomes.ended("g0") == "finished length")


@pytest.mark.timeout(120)
async def test_speech_starts_playing_while_its_chunks_still_arrive(chromium: str, served: Served) -> None:
    _server, outcomes, url = served
    facts = await drive(chromium, url, "speak")
    turn = facts["turn"]
    assert turn["firstAudio"] is not None
    assert turn["playbackStarted"] < turn["speechFinished"], turn
    assert turn["chunksAfterPlayback"] >= 1, turn
    # The Web Audio clock advances between two moments at which chunks are still arriving.
    playing = [s for s in facts["samples"] if s["clock"] is not None and not s["done"] and s["chunks"] > 0]
    assert playing[-1]["clock"] > playing[0]["clock"], playing
    assert playing[-1]["chunks"] > playing[0]["chunks"], playing
    assert {s["state"] for s in playing} == {"running"}
    assert facts["ttfa"].endswith("ms)")
    await eventually(lambda: outcomes.ended("sg0") == "finished stop")


@pytest.mark.timeout(120)
async def test_stop_cancels_the_answer_in_the_server(chromium: str, served: Served) -> None:
    server, outcomes, url = served
    facts = await drive(chromium, url, "stop")
    assert facts["turn"]["reason"] == "cancelled"
    assert facts["tokensLater"] == facts["turn"]["tokens"]
    assert facts["sendEnabled"]
    await eventually(lambda: outcomes.ended("g0") == "cancelled cancelled")  # the request ended CANCELLED in the server
    await eventually(lambda: server.router.active() == 0)


@pytest.mark.timeout(120)
async def test_a_page_from_another_origin_is_refused(chromium: str, served: Served) -> None:
    server, outcomes, _url = served
    assert server.websocket is not None
    endpoint = f"ws://127.0.0.1:{server.websocket.port}{SESSION_PATH}"
    hostile = f"""<!doctype html><script>
      const ws = new WebSocket({json.dumps(endpoint)}, ["rillet.v1.proto"]);
      window.outcome = new Promise((resolve) => {{
        ws.onopen = () => resolve({{ opened: true }});
        ws.onclose = (e) => resolve({{ opened: false, code: e.code }});
      }});
    </script>""".encode()

    async def serve_page(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = f"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {len(hostile)}\r\n\r\n"
        writer.write(head.encode() + hostile)
        await writer.drain()
        writer.close()

    other = await asyncio.start_server(serve_page, "127.0.0.1", 0)  # another origin: same host, another port
    try:
        port = other.sockets[0].getsockname()[1]
        facts = await drive(chromium, f"http://127.0.0.1:{port}/", "cross-origin")
    finally:
        other.close()
    assert facts["origin"] == f"http://127.0.0.1:{port}"
    assert facts["opened"] is False
    assert facts["code"] == 1006  # browsers show a refused handshake as an abnormal close, nothing more
    assert outcomes.refused_with == [403]  # the server refused it: the Origin is not the page's own
    assert outcomes.sessions == 0
