"""The WebSocket edge's pure parts: subprotocol choice, the token subprotocol, the page's origins, settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from websockets.datastructures import Headers
from websockets.exceptions import NegotiationError
from websockets.typing import Subprotocol

from rillet.server.config import WebSocketConfig
from rillet.server.errors import InvalidArgument, Unauthenticated
from rillet.server.transport.websocket import (
    CODECS,
    JSON,
    PROTO,
    _token,
    page_origins,
    select_subprotocol,
    token_protocol,
)
from rillet.v1 import inference_service_pb2 as pb


def offer(*protocols: str) -> list[Subprotocol]:
    return [Subprotocol(p) for p in protocols]


def test_the_first_encoding_offered_is_chosen_and_a_token_never_is() -> None:
    token = token_protocol("secret")
    assert select_subprotocol(None, offer(token, "rillet.v1.json", "rillet.v1.proto")) == JSON  # type: ignore[arg-type]
    assert select_subprotocol(None, offer("rillet.v1.proto", token)) == PROTO  # type: ignore[arg-type]
    assert select_subprotocol(None, offer()) is None  # type: ignore[arg-type]  # binary protobuf
    assert select_subprotocol(None, offer(token)) is None  # type: ignore[arg-type]
    with pytest.raises(NegotiationError):
        select_subprotocol(None, offer("graphql-ws"))  # type: ignore[arg-type]


def test_a_token_travels_in_the_header_first_then_in_its_subprotocol() -> None:
    assert token_protocol("tok?>") == "rillet.bearer.dG9rPz4"  # the TypeScript SDK encodes it the same way
    assert _token(Headers(), ["rillet.v1.proto", token_protocol("é and ü")]) == "é and ü"
    assert _token(Headers({"Authorization": "Bearer from-header"}), [token_protocol("other")]) == "from-header"
    assert _token(Headers(), ["rillet.v1.proto"]) is None
    with pytest.raises(Unauthenticated, match="base64url") as error:
        _token(Headers(), ["rillet.bearer.@@@"])
    assert error.value.reason == "INVALID_TOKEN"


def test_the_pages_origins_are_both_loopback_names_and_none_for_every_address() -> None:
    assert page_origins("http", "127.0.0.1", 8) == ["http://127.0.0.1:8", "http://localhost:8"]
    assert page_origins("https", "rillet.example", 443) == ["https://rillet.example:443"]
    assert page_origins("http", "0.0.0.0", 8) == []


@pytest.mark.parametrize("origin", ["app.example", "https://app.example/", "ftp://app.example", "https://"])
def test_allowed_origins_must_be_origins(origin: str) -> None:
    with pytest.raises(ValidationError, match="not an origin"):
        WebSocketConfig(allowed_origins=(origin,))


def test_each_codec_refuses_the_other_kind_of_message() -> None:
    message = pb.SessionRequest(request_id="a", cancel=pb.Cancel())
    assert CODECS[PROTO].decode(message.SerializeToString()) == message
    assert CODECS[JSON].decode('{"requestId": "a", "cancel": {}}') == message
    for codec, wrong in ((CODECS[PROTO], "text"), (CODECS[JSON], b"\x0a\x01a")):
        with pytest.raises(InvalidArgument) as error:
            codec.decode(wrong)
        assert error.value.reason == "UNDECODABLE_MESSAGE"
    assert CODECS[JSON].encode(pb.SessionResponse(request_id="a", seq=3)) == '{"requestId": "a", "seq": "3"}'
