"""Prefix caches never cross tenants: the real CPU engine behind the real server, two tenants and a grouped pair."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from rillet.client import Client, Finished
from rillet.server.app import RilletServer
from rillet.server.config import Settings

pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="module")]

MEMO = (
    "CONFIDENTIAL. To the board of Northwind Holdings: the acquisition of Contoso Mills closes on the ninth of March "
    "at a price of forty-one dollars a share, and the announcement stays embargoed until the market closes that day."
)


def memo(opening: str) -> str:
    """The memo behind an opening word of its own: no test's prompts share a first token with another test's."""
    return f"{opening}. {MEMO}"


TOKENS = {"acme": "acme-3f9a1c", "beta": "beta-77d0e2", "gamma": "gamma-0b4c58", "delta": "delta-e21a96"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[RilletServer]:
    tenants = {
        "acme": {"tokens": [TOKENS["acme"]]},
        "beta": {"tokens": [TOKENS["beta"]]},
        "gamma": {"tokens": [TOKENS["gamma"]], "cache_group": "northwind"},
        "delta": {"tokens": [TOKENS["delta"]], "cache_group": "northwind"},
    }
    settings = Settings(
        port=0,
        text_engine="llamacpp",
        speech_engine="none",
        llamacpp={"context_length": 2048},
        security={"tenants": tenants},
    )
    server = RilletServer(settings)
    await server.start()
    yield server
    await server.stop(grace_s=0)


async def cached(server: RilletServer, tenant: str, prompt: str) -> int:
    """usage.cached_input_tokens of a 2-token greedy generation of `prompt` by `tenant`."""
    async with Client.connect(f"127.0.0.1:{server.port}", token=TOKENS[tenant]) as client:
        events = [event async for event in client.generate(prompt, max_tokens=2, temperature=0)]
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.usage.input_tokens > 40
    return finished.usage.cached_input_tokens


async def test_a_tenant_reuses_none_of_anothers_prompt_and_all_of_its_own(server: RilletServer) -> None:
    prompt = memo("Draft")
    assert await cached(server, "acme", prompt) == 0
    assert await cached(server, "beta", prompt + " Regards,") == 0  # the memo's start is acme's alone
    assert await cached(server, "beta", prompt + " Yours,") > 40  # beta's own first request is cached for beta
    assert await cached(server, "acme", prompt + " Sincerely,") > 40  # and acme still reuses its own


async def test_concurrent_prompts_of_two_tenants_share_no_cells(server: RilletServer) -> None:
    prompt = memo("Urgent")  # nobody's cache holds this one yet
    first, second = await asyncio.gather(cached(server, "acme", prompt), cached(server, "beta", prompt + " P.S."))
    assert (first, second) == (0, 0)  # neither took the other's running cells nor waited for its prefill


async def test_tenants_of_one_cache_group_share_by_the_operators_choice(server: RilletServer) -> None:
    prompt = memo("Revised")
    assert await cached(server, "gamma", prompt) == 0
    assert await cached(server, "delta", prompt + " Regards,") > 40
    assert await cached(server, "acme", prompt + " Regards,") == 0  # outside the group, nothing
