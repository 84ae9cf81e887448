"""The semantic-convention names Rillet emits, pinned to the versions they were read from, and its own names.

- GenAI: open-telemetry/semantic-conventions **v1.41.0** (the last release of the main repository that holds the
  GenAI conventions; they are "Development"): docs/gen-ai/gen-ai-spans.md, gen-ai-metrics.md, model/gen-ai/.
- RPC and gRPC: **v1.44.0** (Release Candidate): docs/rpc/rpc-spans.md, grpc.md, rpc-metrics.md.
  `rpc.method` is "Service/Method"; `rpc.response.status_code` is the status name (a string); on server spans only
  UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE and DATA_LOSS are errors, so CANCELLED (the client
  went away) is not.
- `rillet.*` names are Rillet's own, where the conventions define nothing (queue, slots, batch size, speech).
"""

from __future__ import annotations

from typing import Final

GENAI_SEMCONV_VERSION: Final = "1.41.0"
RPC_SEMCONV_VERSION: Final = "1.44.0"
SCHEMA_URL: Final = f"https://opentelemetry.io/schemas/{RPC_SEMCONV_VERSION}"

# -- attributes (GenAI v1.41.0) -------------------------------------------------------------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_OUTPUT_TYPE: Final = "gen_ai.output.type"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P: Final = "gen_ai.request.top_p"
GEN_AI_REQUEST_TOP_K: Final = "gen_ai.request.top_k"
GEN_AI_REQUEST_SEED: Final = "gen_ai.request.seed"
GEN_AI_REQUEST_STOP_SEQUENCES: Final = "gen_ai.request.stop_sequences"
GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: Final = "gen_ai.response.time_to_first_chunk"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"  # opt-in (content capture)
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"  # opt-in (content capture)
ERROR_TYPE: Final = "error.type"

# gen_ai.operation.name: well-known values, and Rillet's custom one for speech (the list has none).
OP_TEXT_COMPLETION: Final = "text_completion"
OP_CHAT: Final = "chat"
OP_TEXT_TO_SPEECH: Final = "text_to_speech"

# -- attributes (RPC v1.44.0) ---------------------------------------------------------------------------------------
RPC_SYSTEM_NAME: Final = "rpc.system.name"
RPC_METHOD: Final = "rpc.method"
RPC_RESPONSE_STATUS_CODE: Final = "rpc.response.status_code"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
NETWORK_PEER_ADDRESS: Final = "network.peer.address"
NETWORK_PEER_PORT: Final = "network.peer.port"

GRPC_SERVER_ERROR_CODES: Final = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
"""Status codes that make a gRPC *server* span an error (v1.44.0 docs/rpc/grpc.md)."""

# -- Rillet's own attributes ----------------------------------------------------------------------------------------
RILLET_REQUEST_ID: Final = "rillet.request.id"
RILLET_ERROR_REASON: Final = "rillet.error.reason"
RILLET_REQUEST_OUTCOME: Final = "rillet.request.outcome"  # finished | cancelled | failed
RILLET_ENGINE: Final = "rillet.engine"
RILLET_REQUEST_MIN_P: Final = "rillet.request.min_p"
RILLET_REQUEST_REPETITION_PENALTY: Final = "rillet.request.repetition_penalty"
RILLET_REQUEST_TOP_LOGPROBS: Final = "rillet.request.top_logprobs"
RILLET_QUEUE_DURATION: Final = "rillet.request.queue.duration"
RILLET_TIME_TO_FIRST_AUDIO: Final = "rillet.response.time_to_first_audio"
RILLET_OUTPUT_AUDIO_SECONDS: Final = "rillet.usage.output_audio_seconds"
RILLET_INPUT_CHARACTERS: Final = "rillet.usage.input_characters"
RILLET_LINK_KIND: Final = "rillet.link.kind"  # on links: "rpc" (the call carrying the request), "text_source"

# -- span events (Rillet's own) -------------------------------------------------------------------------------------
EVENT_ADMITTED: Final = "rillet.request.admitted"
EVENT_FIRST_TOKEN: Final = "rillet.request.first_token"
EVENT_FIRST_AUDIO: Final = "rillet.request.first_audio"
EVENT_CANCELLED: Final = "rillet.request.cancelled"

# -- metrics --------------------------------------------------------------------------------------------------------
# GenAI v1.41.0 server metrics, with the advised ExplicitBucketBoundaries.
GEN_AI_SERVER_REQUEST_DURATION: Final = "gen_ai.server.request.duration"
GEN_AI_SERVER_TIME_TO_FIRST_TOKEN: Final = "gen_ai.server.time_to_first_token"
GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN: Final = "gen_ai.server.time_per_output_token"
REQUEST_DURATION_BUCKETS: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TIME_TO_FIRST_TOKEN_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
TIME_PER_OUTPUT_TOKEN_BUCKETS: Final = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
# RPC v1.44.0.
RPC_SERVER_CALL_DURATION: Final = "rpc.server.call.duration"
RPC_CALL_DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
# Rillet's own (the conventions define no server-side token counter, queue, slot, batch or speech metric).
RILLET_TIME_TO_FIRST_AUDIO_METRIC: Final = "rillet.server.time_to_first_audio"
RILLET_QUEUE_DURATION_METRIC: Final = "rillet.server.request.queue.duration"
RILLET_TOKEN_USAGE: Final = "rillet.server.token.usage"
RILLET_AUDIO_OUTPUT: Final = "rillet.server.audio.output"
RILLET_REQUESTS: Final = "rillet.server.requests"
RILLET_REQUEST_ERRORS: Final = "rillet.server.request.errors"
RILLET_REJECTED_MESSAGES: Final = "rillet.server.rejected_messages"
RILLET_ACTIVE_SESSIONS: Final = "rillet.server.active_sessions"
RILLET_ACTIVE_REQUESTS: Final = "rillet.server.active_requests"
RILLET_QUEUED_REQUESTS: Final = "rillet.server.queued_requests"
RILLET_ENGINE_SLOTS_USED: Final = "rillet.engine.slots.used"
RILLET_ENGINE_SLOTS_LIMIT: Final = "rillet.engine.slots.limit"
RILLET_ENGINE_BATCH_SIZE: Final = "rillet.engine.batch.size"
# The Gateway API Inference Extension's model-server protocol (its endpoint picker, now llm-d's router) reads a
# waiting-requests gauge, a running-requests gauge and a KV-cache-utilization gauge (0-1) per pod; these are
# Rillet's, one series per engine (rillet_engine label), mapped for the picker by the engineConfigs entry that
# deploy/helm/rillet/README.md gives.
RILLET_ENGINE_REQUESTS_RUNNING: Final = "rillet.engine.requests.running"
RILLET_ENGINE_REQUESTS_WAITING: Final = "rillet.engine.requests.waiting"
RILLET_ENGINE_KV_CACHE_UTILIZATION: Final = "rillet.engine.kv_cache.utilization"
BATCH_SIZE_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
