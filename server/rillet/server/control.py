"""The control plane's work behind ControlService: server info, load, the tokenizers (bounded), tenant-scoped abort."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from rillet.server import version
from rillet.server.config import LimitsConfig
from rillet.server.engine.base import KvCacheReporting, Tokenizing
from rillet.server.errors import InvalidArgument, NotFound, clip
from rillet.server.load import LoadBoard, ServerLoad
from rillet.server.reasons import Reason
from rillet.server.scheduler import Router, TextRoute
from rillet.server.session import Lifecycle
from rillet.server.types import ChatMessage, ModelInfo, ModelKind
from rillet.server.validation import validate_token_ids, validate_tokenizer_prompt

__all__ = ["Control", "EngineInfo", "ServerInfo", "TextOrChat"]

TextOrChat = str | tuple[ChatMessage, ...]
"""What the tokenizer RPCs read: a completion prompt or a chat prompt."""


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """An engine and what it offers beyond generation."""

    name: str
    kind: ModelKind
    slots: int
    is_test_engine: bool
    tokenizer: bool
    reports_kv_cache: bool


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What GetServerInfo tells: version, engines, models (with whether each is its kind's default), drain state."""

    version: str
    engines: tuple[EngineInfo, ...]
    models: tuple[tuple[ModelInfo, bool], ...]
    draining: bool
    start_time: float  # seconds since the epoch


class Control:
    """ControlService's domain side; the servicer (transport/control.py) only converts.

    Tokenizer calls are bounded like generation: their prompts pass the same checks (validation.py), and at most
    `tokenizer_concurrency` run at once, each on a worker thread (an engine's tokenizer may block). Abort reaches only
    the caller's tenant's requests (session/registry.py).
    """

    def __init__(
        self,
        router: Router,
        limits: LimitsConfig,
        lifecycle: Lifecycle,
        board: LoadBoard,
        *,
        tokenizer_concurrency: int = 2,
    ) -> None:
        self._router = router
        self._limits = limits
        self._lifecycle = lifecycle
        self._board = board
        self._tokenizers = asyncio.Semaphore(tokenizer_concurrency)
        self._version = version()
        self.start_time = time.time()

    def server_info(self) -> ServerInfo:
        """Unavailable (WARMING_UP) while the engines warm up, as ListModels."""
        models = tuple(self._router.models())
        engines = tuple(
            EngineInfo(
                name=engine.name,
                kind=engine.serves,
                slots=engine.slots,
                is_test_engine=any(m.is_test_engine for m in engine.models),
                tokenizer=isinstance(engine, Tokenizing),
                reports_kv_cache=isinstance(engine, KvCacheReporting),
            )
            for engine in self._router.engines
        )
        return ServerInfo(self._version, engines, models, self._lifecycle.draining, self.start_time)

    def load(self) -> ServerLoad:
        return self._board.snapshot()

    async def tokenize(self, model: str, prompt: TextOrChat | None) -> list[int]:
        """The prompt's token ids, as generation would read them."""
        route, _ = validate_tokenizer_prompt(model, prompt, self._limits, self._router)
        tokenizer = _tokenizer(route)
        assert prompt is not None  # validation refused an empty one
        async with self._tokenizers:
            return await asyncio.to_thread(tokenizer.tokenize, route.model.name, prompt)

    async def count_tokens(self, model: str, prompt: TextOrChat | None) -> tuple[int, int]:
        """How many tokens the prompt takes, and the model's context length."""
        ids = await self.tokenize(model, prompt)
        return len(ids), self._router.resolve(model, ModelKind.TEXT_GENERATION).model.context_length

    async def detokenize(self, model: str, token_ids: Sequence[int]) -> str:
        route = validate_token_ids(model, token_ids, self._limits, self._router)
        tokenizer = _tokenizer(route)
        async with self._tokenizers:
            return await asyncio.to_thread(tokenizer.detokenize, route.model.name, tuple(token_ids))

    def abort(self, tenant: str, request_id: str | None) -> list[str]:
        """End the tenant's requests under `request_id` (None: all of them); the ids of those ended.

        NotFound (REQUEST_NOT_FOUND) when the tenant has nothing in flight under that id, whatever other tenants have.
        """
        registry = self._lifecycle.requests
        if request_id is None:
            return registry.abort_all(tenant)
        ended = registry.abort(tenant, request_id)
        if not ended:
            raise NotFound(
                f"no request {clip(request_id)!r} of yours is in flight on this server",
                reason=Reason.REQUEST_NOT_FOUND,
                metadata={"request_id": clip(request_id)},
            )
        return ended


def _tokenizer(route: TextRoute) -> Tokenizing:
    engine = route.engine
    if not isinstance(engine, Tokenizing):
        raise InvalidArgument(
            f"the {engine.name} engine serving {route.model.name!r} does not tokenize for clients "
            "(GetServerInfo lists the engines that do)",
            field="model",
            reason=Reason.TOKENIZER_UNSUPPORTED,
        )
    return engine
