"""Per-request options: one frozen object per request kind, the one list of what a request can ask for."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict, TypeVar

from rillet.client._types import AudioEncoding, Priority


class SchemaModel(Protocol):
    """A class that states its JSON Schema, as a pydantic model does (`model_json_schema()`)."""

    @classmethod
    def model_json_schema(cls) -> dict[str, Any]: ...


JsonSchema = str | Mapping[str, Any] | type[SchemaModel]
"""A JSON Schema as GenerateOptions takes it: its JSON text, a dict, or a pydantic model class."""

CONSTRAINTS = ("json_schema", "regex", "grammar", "choice", "json_object")
"""GenerateOptions' output constraints, the GenerateParams oneof's fields: at most one is set."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerateOptions:
    """How one generation runs; None (or empty) leaves a field to the server's defaults.

    Pass it to `Client.generate` or `Session.generate`, or give its fields as keywords there (keywords override the
    fields of an options object given with them). The CLI and `rillet bench` build one from their flags.

    - `model`: the model's name; "" for the server's default text model.
    - `max_tokens`: at most this many tokens are generated.
    - `temperature` (0: greedy), `top_p`, `top_k`, `min_p`, `repetition_penalty`, `seed`: sampling.
    - `stop`: strings that end the generation when generated (left out of the output).
    - `top_logprobs`: each token comes with the log-probabilities of this many most likely alternatives.
    - An output constraint, at most one (the model enforces it or refuses the request; ListModels lists the kinds):
      `json_schema` (JSON text, a dict, or a pydantic model class, kept as JSON text: the output is one JSON value
      valid against it), `regex` (the whole output matches; Rust regex syntax), `grammar` (Lark, as llguidance reads
      it), `choice` (the output is one of these strings), `json_object` (the output is one JSON object). Finish
      reason STOP means the output is complete; LENGTH or STOP_SEQUENCE that it may be a prefix of one.
      `GenerateStream.parse(Model)` collects and validates it.
    - `timeout`: seconds the request may take: a one-shot call's deadline, or a session request's own limit.
    - `priority`: its admission class (Priority.BATCH waits behind interactive requests, never starved); None is the
      server's default, interactive.
    - `traceparent`, `tracestate`: the W3C trace context the request joins; unset, the caller's current
      OpenTelemetry context (with opentelemetry-api installed).
    """

    model: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()
    top_logprobs: int | None = None
    json_schema: JsonSchema | None = None
    regex: str | None = None
    grammar: str | None = None
    choice: Sequence[str] | None = None
    json_object: bool = False
    timeout: float | None = None
    priority: Priority | None = None
    traceparent: str = ""
    tracestate: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            raise TypeError("stop takes a list of strings, e.g. stop=['\\n']")
        object.__setattr__(self, "stop", tuple(self.stop))
        if isinstance(self.choice, str):
            raise TypeError("choice takes a list of strings, e.g. choice=['yes', 'no']")
        if self.choice is not None:
            object.__setattr__(self, "choice", tuple(self.choice))
        given = [name for name in CONSTRAINTS if getattr(self, name) not in (None, False)]
        if len(given) > 1:
            raise ValueError(f"at most one output constraint per request; got {', '.join(given)}")
        if self.json_schema is not None:
            object.__setattr__(self, "json_schema", schema_text(self.json_schema))


def schema_text(schema: JsonSchema) -> str:
    """A JSON Schema's text: as given, a dict dumped, or a model class's `model_json_schema()` dumped."""
    if isinstance(schema, str):
        return schema
    if isinstance(schema, Mapping):
        return json.dumps(schema)
    if isinstance(schema, type) and callable(getattr(schema, "model_json_schema", None)):
        return json.dumps(schema.model_json_schema())
    raise TypeError(f"json_schema takes JSON text, a dict or a pydantic model class, not {schema!r}")


class GenerateFields(TypedDict, total=False):
    """GenerateOptions' fields as keyword arguments."""

    model: str
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    min_p: float | None
    repetition_penalty: float | None
    seed: int | None
    stop: Sequence[str]
    top_logprobs: int | None
    json_schema: JsonSchema | None
    regex: str | None
    grammar: str | None
    choice: Sequence[str] | None
    json_object: bool
    timeout: float | None
    priority: Priority | None
    traceparent: str
    tracestate: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SynthesizeOptions:
    """How one synthesis runs; passed or given as keywords like GenerateOptions.

    - `voice`: the voice's name; "" for the server's default voice.
    - `encoding`: how the audio is encoded (AudioEncoding): PCM16 by default, Ogg Opus, μ-law or A-law.
    - `sample_rate_hertz`: the audio's rate; 0 for the encoding's usual one (PCM16: the voice's own).
    - `max_chunk_s`: the longest audio chunk, in seconds; None for the server's default.
    - `word_timings`: each chunk carries the words whose audio starts in it (voices whose Model says so).
    - `timeout`, `priority`, `traceparent`, `tracestate`: as in GenerateOptions.
    """

    voice: str = ""
    encoding: AudioEncoding = AudioEncoding.LINEAR16
    sample_rate_hertz: int = 0
    max_chunk_s: float | None = None
    word_timings: bool = False
    timeout: float | None = None
    priority: Priority | None = None
    traceparent: str = ""
    tracestate: str = ""


class SynthesizeFields(TypedDict, total=False):
    """SynthesizeOptions' fields as keyword arguments."""

    voice: str
    encoding: AudioEncoding
    sample_rate_hertz: int
    max_chunk_s: float | None
    word_timings: bool
    timeout: float | None
    priority: Priority | None
    traceparent: str
    tracestate: str


Options = TypeVar("Options", GenerateOptions, SynthesizeOptions)


def resolve(options: Options | None, default: Options, fields: Mapping[str, Any]) -> Options:
    """`options` (or `default`) with `fields` given as keywords in its place."""
    base = default if options is None else options
    return dataclasses.replace(base, **fields) if fields else base
