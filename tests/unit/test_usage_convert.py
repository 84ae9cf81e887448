"""usage.cached_input_tokens from the server's domain type through the proto to the SDK's Usage."""

from __future__ import annotations

from rillet.client import _convert as sdk_convert
from rillet.server.transport import convert
from rillet.server.types import Finished, FinishReason, Timings, Usage
from rillet.v1 import common_pb2


def test_cached_input_tokens_reach_the_sdk() -> None:
    usage = Usage(input_tokens=530, output_tokens=64, cached_input_tokens=512)
    message = convert.finished(Finished(FinishReason.LENGTH, usage, Timings(0.0, 0.01, 0.02, 0.5)))
    wire = common_pb2.Finished.FromString(message.SerializeToString())
    assert wire.usage.cached_input_tokens == 512
    seen = sdk_convert.finished(wire).usage
    assert (seen.input_tokens, seen.output_tokens, seen.cached_input_tokens) == (530, 64, 512)


def test_an_old_server_without_the_field_reads_as_nothing_cached() -> None:
    wire = common_pb2.Finished(usage=common_pb2.Usage(input_tokens=7, output_tokens=3))
    assert sdk_convert.finished(wire).usage.cached_input_tokens == 0
