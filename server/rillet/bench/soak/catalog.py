"""What the soak's clients send: prompts, texts to speak, frames no request type decodes, and the codes they expect."""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import DecodeError

from rillet.v1 import inference_service_pb2

OK, RE = grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
ECHO_CHARS = 64  # the server clips a request id it echoes past the id limit to this many characters (errors.clip)

PROMPTS = (
    "The old lighthouse keeper climbed the stairs every evening, and on the last night of the year he",
    "The history of the printing press begins in the fifteenth century, when",
    "To make a simple loaf of bread, you need flour, water, salt and yeast. First,",
    "The city council met on Tuesday to discuss the new bicycle lanes. Several residents argued that",
    "When the spacecraft entered the orbit of the red planet, the crew noticed",
    "My grandmother used to tell us a story about a fox and a crow. The fox",
    "Rivers shape the land around them in many ways. Over thousands of years,",
    "The detective looked at the muddy footprints by the window and said",
)
LONG_PROMPT = " ".join(PROMPTS) * 4  # ~400 tokens: a prefill long enough for some cancels to land in it
CHATS = ("Name three colours.", "Say hello in French.", "What is two plus two?", "Give me a word that rhymes with cat.")
SENTENCES = (
    "The train leaves at noon.",
    "Rivers shape the land around them.",
    "Please close the window before you go.",
    "The detective looked at the muddy footprints.",
    "Bread needs flour, water, salt and yeast.",
    "The crew noticed a light on the red planet.",
    "Tomorrow will be sunny, with a light breeze.",
)
UNDECODABLE = (
    b"\x0a\x02\xff\xfe",  # field 1 (a string in every request type here, or a message) holding invalid UTF-8
    b"\x0a\x05ab",  # a length-delimited field cut short
    b"\x08\xff",  # a truncated varint
    b"\x0c",  # a stray end-group tag
    b"\x4b" * 200 + b"\x4c" * 200,  # groups nested past protobuf's recursion limit
)


def check_undecodable() -> None:
    """Each UNDECODABLE frame must really be undecodable for every request type, or the soak is wrong."""
    for data in UNDECODABLE:
        for message_type in (
            inference_service_pb2.SessionRequest,
            inference_service_pb2.GenerateRequest,
            inference_service_pb2.SynthesizeRequest,
        ):
            try:
                message_type.FromString(data)
            except DecodeError:
                continue
            raise AssertionError(f"{data[:8]!r} decodes as {message_type.__name__}")


def echoed(request_id: str, limit: int) -> str:
    """The request id the server puts on a reply about `request_id` (clipped past the id limit)."""
    return request_id if len(request_id) <= limit else request_id[:ECHO_CHARS] + "…"


def duration_s(message: duration_pb2.Duration) -> float:
    return message.ToTimedelta().total_seconds()
