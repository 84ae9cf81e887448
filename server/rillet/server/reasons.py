"""Every ErrorInfo reason the server sends: one per condition, its canonical code, and what a client should do.

This is the contract's list (rillet.v1.ErrorReason mirrors it, the README's reasons table is generated from it by
scripts/gen_reasons.py, and tests/unit/test_reasons.py proves all three and every reason the code raises agree).
A reason names a condition, never a place in the code: the same condition raised at the edge and at an engine's
seam has one reason. Clients match on the reason; the message is for people and may change.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["CATALOGUE", "Code", "Reason", "ReasonDoc"]


class Code(enum.IntEnum):
    """The canonical status codes Rillet uses (values are google.rpc.Code numbers)."""

    CANCELLED = 1
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    RESOURCE_EXHAUSTED = 8
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class Reason(enum.StrEnum):
    """An ErrorInfo reason (domain "rillet.dev"); the value, its own name, is what travels."""

    @staticmethod
    def _generate_next_value_(name: str, start: int, count: int, last_values: list[str]) -> str:
        return name

    # Requests: their fields
    EMPTY_PROMPT = enum.auto()
    PROMPT_TOO_LARGE = enum.auto()
    PROMPT_TOO_LONG = enum.auto()
    TOKEN_ID_OUT_OF_RANGE = enum.auto()
    CHAT_TEMPLATE_MISSING = enum.auto()
    CHAT_TEMPLATE_UNSUPPORTED = enum.auto()
    CHAT_ROLE_INVALID = enum.auto()
    CHAT_ROLE_TOO_LONG = enum.auto()
    TOO_MANY_CHAT_MESSAGES = enum.auto()
    MAX_TOKENS_OUT_OF_RANGE = enum.auto()
    SAMPLING_OUT_OF_RANGE = enum.auto()
    TOP_LOGPROBS_OUT_OF_RANGE = enum.auto()
    FIELD_UNSUPPORTED = enum.auto()
    EMPTY_STOP = enum.auto()
    STOP_TOO_LONG = enum.auto()
    TOO_MANY_STOPS = enum.auto()
    CONSTRAINT_UNSUPPORTED = enum.auto()
    CONSTRAINT_INVALID = enum.auto()
    CONSTRAINT_TOO_LARGE = enum.auto()
    CONSTRAINT_TOO_COMPLEX = enum.auto()
    EMPTY_TEXT = enum.auto()
    TEXT_TOO_LARGE = enum.auto()
    TEXT_PIECE_TOO_LARGE = enum.auto()
    NUL_CHARACTER = enum.auto()
    NAME_TOO_LONG = enum.auto()
    UNSUPPORTED_ENCODING = enum.auto()
    UNSUPPORTED_SAMPLE_RATE = enum.auto()
    CHUNK_DURATION_OUT_OF_RANGE = enum.auto()
    CONFLICTING_TEXT_SOURCES = enum.auto()
    REQUEST_REJECTED = enum.auto()
    UNKNOWN_PRIORITY = enum.auto()
    # Messages of a session or call
    UNDECODABLE_MESSAGE = enum.auto()
    INVALID_DURATION = enum.auto()
    MISSING_KIND = enum.auto()
    MISSING_REQUEST_ID = enum.auto()
    REQUEST_ID_TOO_LONG = enum.auto()
    DUPLICATE_REQUEST_ID = enum.auto()
    UNKNOWN_REQUEST_ID = enum.auto()
    NOT_STREAMING_INPUT = enum.auto()
    INPUT_ENDED = enum.auto()
    NOT_A_SYNTHESIS = enum.auto()
    UNKNOWN_SOURCE_REQUEST = enum.auto()
    SOURCE_NOT_GENERATE = enum.auto()
    SOURCE_ENDED = enum.auto()
    MESSAGE_AFTER_HALF_CLOSE = enum.auto()
    MISSING_TARGET = enum.auto()
    REQUEST_NOT_FOUND = enum.auto()
    # Models and voices
    MODEL_NOT_FOUND = enum.auto()
    NO_DEFAULT_MODEL = enum.auto()
    TOKENIZER_UNSUPPORTED = enum.auto()
    # Limits and load
    QUEUE_FULL = enum.auto()
    TENANT_QUEUE_SHARE = enum.auto()
    TENANT_REQUEST_LIMIT = enum.auto()
    TENANT_SESSION_LIMIT = enum.auto()
    SERVER_SESSION_LIMIT = enum.auto()
    TOO_MANY_REQUESTS_IN_SESSION = enum.auto()
    LOAD_STREAM_LIMIT = enum.auto()
    # Time
    REQUEST_TIMEOUT = enum.auto()
    CLIENT_STALLED = enum.auto()
    INPUT_IDLE = enum.auto()
    SESSION_IDLE = enum.auto()
    ENGINE_TIMEOUT = enum.auto()
    # Credentials
    MISSING_TOKEN = enum.auto()
    INVALID_TOKEN = enum.auto()
    # Server and engine state
    WARMING_UP = enum.auto()
    SHUTTING_DOWN = enum.auto()
    ENGINE_DEAD = enum.auto()
    ENGINE_START_FAILED = enum.auto()
    # Failures of one request
    KV_CACHE_FULL = enum.auto()
    LOGPROB_MISSING = enum.auto()
    ENGINE_REQUEST_FAILED = enum.auto()
    ENGINE_STREAM_ENDED = enum.auto()
    # The defaults of errors.py's classes, for an error raised without a reason of its own
    INVALID_ARGUMENT = enum.auto()
    NOT_FOUND = enum.auto()
    UNAVAILABLE = enum.auto()
    UNAUTHENTICATED = enum.auto()
    INTERNAL = enum.auto()


@dataclass(frozen=True, slots=True)
class ReasonDoc:
    """What one reason means: its code, when it is sent, and what a client should do about it."""

    code: Code
    when: str
    action: str


_FIX = "fix the request; retrying it unchanged fails again"
_RETRY = "retry after the RetryInfo delay, or elsewhere"
_BUG = "report it with the request id; other requests are unaffected"

_I, _NF, _RE, _UN, _DE, _AU, _IN = (
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.RESOURCE_EXHAUSTED,
    Code.UNAVAILABLE,
    Code.DEADLINE_EXCEEDED,
    Code.UNAUTHENTICATED,
    Code.INTERNAL,
)

CATALOGUE: dict[Reason, ReasonDoc] = {
    Reason.EMPTY_PROMPT: ReasonDoc(_I, "the prompt is unset or empty (no text, no token ids, no messages)", _FIX),
    Reason.PROMPT_TOO_LARGE: ReasonDoc(
        _I, "the prompt has more characters or token ids than the server accepts (limits)", _FIX
    ),
    Reason.PROMPT_TOO_LONG: ReasonDoc(
        _I, "prompt tokens plus max_tokens do not fit the model's context (metadata: the limits)", "shorten either"
    ),
    Reason.TOKEN_ID_OUT_OF_RANGE: ReasonDoc(
        _I, "a token id is not one of the model's vocabulary (negative, or past its end)", _FIX
    ),
    Reason.CHAT_TEMPLATE_MISSING: ReasonDoc(
        _I, "a chat prompt for a model without a chat template (ListModels: supports_chat)", "send text or token ids"
    ),
    Reason.CHAT_TEMPLATE_UNSUPPORTED: ReasonDoc(
        _I, "the model's chat template refuses the conversation (a role it lacks, turns that do not alternate)", _FIX
    ),
    Reason.CHAT_ROLE_INVALID: ReasonDoc(
        _I, "a chat role holds the model's control-token text (it would forge a turn of the conversation)", _FIX
    ),
    Reason.CHAT_ROLE_TOO_LONG: ReasonDoc(_I, "a chat role longer than the limit", _FIX),
    Reason.TOO_MANY_CHAT_MESSAGES: ReasonDoc(_I, "more chat messages than the limit", _FIX),
    Reason.MAX_TOKENS_OUT_OF_RANGE: ReasonDoc(_I, "max_tokens is 0 or above the model's max_tokens_limit", _FIX),
    Reason.SAMPLING_OUT_OF_RANGE: ReasonDoc(_I, "a sampling value outside its documented range (or NaN)", _FIX),
    Reason.TOP_LOGPROBS_OUT_OF_RANGE: ReasonDoc(_I, "top_logprobs above the server's limit", _FIX),
    Reason.FIELD_UNSUPPORTED: ReasonDoc(
        _I,
        "a field the model does not honour (metadata: field; ListModels: text_capabilities)",
        "leave it unset or pick a model that lists it",
    ),
    Reason.EMPTY_STOP: ReasonDoc(_I, "an empty stop string", _FIX),
    Reason.STOP_TOO_LONG: ReasonDoc(_I, "a stop string longer than the limit", _FIX),
    Reason.TOO_MANY_STOPS: ReasonDoc(_I, "more stop strings than the limit", _FIX),
    Reason.CONSTRAINT_UNSUPPORTED: ReasonDoc(
        _I, "an output constraint kind the model does not enforce (ListModels: constraint_kinds)", "pick another model"
    ),
    Reason.CONSTRAINT_INVALID: ReasonDoc(
        _I, "the schema, regex or grammar does not parse or uses what the compiler lacks (the message says where)", _FIX
    ),
    Reason.CONSTRAINT_TOO_LARGE: ReasonDoc(_I, "the constraint's text or choices are over the limits", _FIX),
    Reason.CONSTRAINT_TOO_COMPLEX: ReasonDoc(
        _I, "the constraint's compilation exceeded the compiler's work or time bounds", "simplify the constraint"
    ),
    Reason.EMPTY_TEXT: ReasonDoc(_I, "a synthesis of empty or unspeakable text the client gave", _FIX),
    Reason.TEXT_TOO_LARGE: ReasonDoc(_I, "a synthesis's text, in total, is over the limit", _FIX),
    Reason.TEXT_PIECE_TOO_LARGE: ReasonDoc(_I, "one AppendText piece is over the limit", "send smaller pieces"),
    Reason.NUL_CHARACTER: ReasonDoc(_I, "a NUL character in text", _FIX),
    Reason.NAME_TOO_LONG: ReasonDoc(_I, "a model or voice name longer than the limit", _FIX),
    Reason.UNSUPPORTED_ENCODING: ReasonDoc(_I, "an audio encoding the server does not produce", _FIX),
    Reason.UNSUPPORTED_SAMPLE_RATE: ReasonDoc(_I, "an audio sample rate the voice cannot produce", _FIX),
    Reason.CHUNK_DURATION_OUT_OF_RANGE: ReasonDoc(
        _I, "max_chunk_duration outside its range (0.01 s to 2 s), or a chunk bound of no samples", _FIX
    ),
    Reason.CONFLICTING_TEXT_SOURCES: ReasonDoc(
        _I, "a synthesis given both text and text_from_request_id, or streaming input and a source", _FIX
    ),
    Reason.REQUEST_REJECTED: ReasonDoc(
        _I, "the engine's library refused, at submission, a request the server's own checks let through", _FIX
    ),
    Reason.UNKNOWN_PRIORITY: ReasonDoc(_I, "a priority value the server does not know", _FIX),
    Reason.UNDECODABLE_MESSAGE: ReasonDoc(
        _I, "a message that is not valid protobuf (or JSON) of its type, or has bad UTF-8", "fix the client's encoder"
    ),
    Reason.INVALID_DURATION: ReasonDoc(_I, "a Duration outside google.protobuf.Duration's range", _FIX),
    Reason.MISSING_KIND: ReasonDoc(_I, "a session message with no kind set", _FIX),
    Reason.MISSING_REQUEST_ID: ReasonDoc(_I, "a session message with an empty request_id", _FIX),
    Reason.REQUEST_ID_TOO_LONG: ReasonDoc(_I, "a request id longer than the limit", _FIX),
    Reason.DUPLICATE_REQUEST_ID: ReasonDoc(
        Code.ALREADY_EXISTS, "a start for a request id already in flight in the session", "use a new id"
    ),
    Reason.UNKNOWN_REQUEST_ID: ReasonDoc(
        _NF, "a cancel, append or end for an id not in flight (perhaps it just ended)", "usually nothing"
    ),
    Reason.NOT_STREAMING_INPUT: ReasonDoc(
        _I, "AppendText or EndInput for a request that takes no streaming input", _FIX
    ),
    Reason.INPUT_ENDED: ReasonDoc(_I, "AppendText after EndInput", _FIX),
    Reason.NOT_A_SYNTHESIS: ReasonDoc(
        _I,
        "a Cancel with played_samples for a request that is not a synthesis (metadata: field)",
        "cancel the synthesis that played with it, then its generation",
    ),
    Reason.UNKNOWN_SOURCE_REQUEST: ReasonDoc(_NF, "text_from_request_id names no request of this session", _FIX),
    Reason.SOURCE_NOT_GENERATE: ReasonDoc(_I, "text_from_request_id names a request that is not a generation", _FIX),
    Reason.SOURCE_ENDED: ReasonDoc(
        _I, "text_from_request_id names a generation whose text can no longer be followed", "start them together"
    ),
    Reason.MESSAGE_AFTER_HALF_CLOSE: ReasonDoc(_I, "a WebSocket message after the client's half-close", _FIX),
    Reason.MISSING_TARGET: ReasonDoc(_I, "an Abort naming neither a request id nor all requests", _FIX),
    Reason.REQUEST_NOT_FOUND: ReasonDoc(
        _NF,
        "Abort: the caller's tenant has nothing in flight under that id (other tenants are never looked at)",
        "usually nothing: it ended",
    ),
    Reason.MODEL_NOT_FOUND: ReasonDoc(_NF, "no model or voice of that name (ListModels lists them)", _FIX),
    Reason.NO_DEFAULT_MODEL: ReasonDoc(_NF, "no model was named and the server serves none of that kind", _FIX),
    Reason.TOKENIZER_UNSUPPORTED: ReasonDoc(
        _I,
        "a tokenizer call for a model whose engine does not tokenize for clients (GetServerInfo says which)",
        "tokenize elsewhere",
    ),
    Reason.QUEUE_FULL: ReasonDoc(_RE, "the engine's admission queue is full", _RETRY),
    Reason.TENANT_QUEUE_SHARE: ReasonDoc(_RE, "the tenant's share of the engine's queue is full", _RETRY),
    Reason.TENANT_REQUEST_LIMIT: ReasonDoc(_RE, "the tenant has its limit of requests in flight", _RETRY),
    Reason.TENANT_SESSION_LIMIT: ReasonDoc(_RE, "the tenant has its limit of calls open", _RETRY),
    Reason.SERVER_SESSION_LIMIT: ReasonDoc(_RE, "the server has its limit of calls open", _RETRY),
    Reason.TOO_MANY_REQUESTS_IN_SESSION: ReasonDoc(
        _RE, "the session has its limit of requests in flight", "wait for one to end, or open another session"
    ),
    Reason.LOAD_STREAM_LIMIT: ReasonDoc(_RE, "the server has its limit of load report streams open", _RETRY),
    Reason.REQUEST_TIMEOUT: ReasonDoc(_DE, "the request's own timeout passed", "retry with a longer timeout"),
    Reason.CLIENT_STALLED: ReasonDoc(
        _DE, "the request's output waited stall_timeout_s for the client to read it", "read your streams"
    ),
    Reason.INPUT_IDLE: ReasonDoc(
        _DE, "a streaming-input synthesis waited input_idle_timeout_s for text", "send text or EndInput sooner"
    ),
    Reason.SESSION_IDLE: ReasonDoc(_UN, "a WebSocket session had nothing in flight for its idle timeout", "reconnect"),
    Reason.ENGINE_TIMEOUT: ReasonDoc(_DE, "the engine's library timed the request out", "retry later"),
    Reason.MISSING_TOKEN: ReasonDoc(_AU, "auth is on and the call has no bearer token", "send one"),
    Reason.INVALID_TOKEN: ReasonDoc(_AU, "the bearer token is not one the server knows", "send a valid one"),
    Reason.WARMING_UP: ReasonDoc(
        _UN, "the server or its engine has not finished starting (loading, warming up)", "retry shortly (the SDK does)"
    ),
    Reason.SHUTTING_DOWN: ReasonDoc(
        _UN,
        "the server is draining or stopping: it takes no new requests and ends those still running past its grace",
        "retry on another replica",
    ),
    Reason.ENGINE_DEAD: ReasonDoc(
        _IN, "the engine failed for good; the server is draining and will exit", "retry on another replica"
    ),
    Reason.ENGINE_START_FAILED: ReasonDoc(
        _IN,
        "never sent to a client: an engine failed while loading or warming up, and the server exits without serving",
        "operators: see the server's log",
    ),
    Reason.KV_CACHE_FULL: ReasonDoc(_IN, "the engine ran out of KV cache for this request", _BUG),
    Reason.LOGPROB_MISSING: ReasonDoc(
        _IN, "the engine's library did not report a logprob it was asked for (never invented)", _BUG
    ),
    Reason.ENGINE_REQUEST_FAILED: ReasonDoc(
        _IN,
        "the engine failed this request: its library's error, a voice that could not render the text, or an "
        "unexpected error (logged)",
        _BUG,
    ),
    Reason.ENGINE_STREAM_ENDED: ReasonDoc(_IN, "the engine's stream ended without finishing the request", _BUG),
    Reason.INVALID_ARGUMENT: ReasonDoc(_I, "a bad request with no more specific reason", _FIX),
    Reason.NOT_FOUND: ReasonDoc(_NF, "something named does not exist, with no more specific reason", _FIX),
    Reason.UNAVAILABLE: ReasonDoc(
        _UN, "the server cannot take work now, no more specific reason", "retry shortly, or on another replica"
    ),
    Reason.UNAUTHENTICATED: ReasonDoc(_AU, "credentials are wrong, no more specific reason", "send valid ones"),
    Reason.INTERNAL: ReasonDoc(_IN, "a failure that is the server's fault, no more specific reason", _BUG),
}
