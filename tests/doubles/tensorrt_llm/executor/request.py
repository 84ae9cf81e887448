"""Mirror of `tensorrt_llm/executor/request.py` (1.2.1): `GenerationRequest` (the fields the LLM API sets) and
`CancellingRequest`, what `GenerationExecutor.generate_async` and `abort_request` put on the worker's queue."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tensorrt_llm.sampling_params import SamplingParams


@dataclass
class GenerationRequest:
    """One request as the proxy hands it to the worker; `id` is the proxy's client id, set by `set_id`."""

    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    streaming: bool = False
    postproc_params: Any = None
    trace_headers: Mapping[str, str] | None = None
    cache_salt_id: int | None = None
    id: int | None = None

    def set_id(self, id: int) -> GenerationRequest:
        assert self.id is None, f"Request ID is already set: {self.id}"
        self.id = id
        return self


@dataclass
class CancellingRequest:
    """The request to cancel the generation of `id`."""

    id: int
