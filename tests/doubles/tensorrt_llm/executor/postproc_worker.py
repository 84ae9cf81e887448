"""Mirror of `tensorrt_llm/executor/postproc_worker.py` (1.2.1): what a postprocess worker sends back.

With `num_postprocess_workers > 0` the responses are folded and detokenized in separate processes; each one comes
back as `PostprocWorker.Output`, whose `res` is the worker's own `CompletionOutput` when no post_processor is given
("in streaming mode"), and `GenerationResultBase._handle_response` puts it in place of `outputs[0]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple


@dataclass
class PostprocWorkerConfig:
    """The config for the postprocess worker."""

    num_postprocess_workers: int = 0
    postprocess_tokenizer_dir: str | None = None

    @property
    def enabled(self) -> bool:
        return self.num_postprocess_workers > 0


class PostprocWorker:
    """The worker to postprocess the responses from the executor's await_response (the process is simulated)."""

    class Output(NamedTuple):
        client_id: int
        res: Any
        is_final: bool
        error: str = ""
        metrics: Any = None
        request_perf_metrics: Any = None
