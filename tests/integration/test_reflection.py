"""Reflection for every tool: v1 beside v1alpha, method and field symbols resolved, the real types described."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rillet.server.app import RilletServer

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools" / "bin"
SERVICE = "rillet.v1.InferenceService"
# grpc_reflection ships no type information.
Request: Any = reflection_pb2.ServerReflectionRequest
Response: Any = reflection_pb2.ServerReflectionResponse


async def ask(port: int, version: str, *requests: Any) -> list[Any]:
    """One ServerReflectionInfo call under grpc.reflection.`version` (v1 and v1alpha share their messages' bytes)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        if version == "v1alpha":
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = stub.ServerReflectionInfo
        else:
            call = channel.stream_stream(
                f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                request_serializer=Request.SerializeToString,
                response_deserializer=Response.FromString,
            )

        async def requests_iter() -> AsyncIterator[Any]:
            for request in requests:
                yield request

        return [r async for r in call(requests_iter())]


def files_of(response: Any) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    files = (
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in response.file_descriptor_response.file_descriptor_proto
    )
    return {f.name: f for f in files}


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_both_versions_list_the_services_and_resolve_methods_and_fields(
    server: RilletServer, version: str
) -> None:
    listed, method, field, service, missing = await ask(
        server.port,
        version,
        Request(list_services=""),
        Request(file_containing_symbol=f"{SERVICE}.Generate"),
        Request(file_containing_symbol="rillet.v1.GenerateRequest.params"),
        Request(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
        Request(file_containing_symbol=f"{SERVICE}.NoSuchMethod"),
    )
    names = {s.name for s in listed.list_services_response.service}
    assert names == {SERVICE, "rillet.v1.ControlService", "grpc.health.v1.Health",
                     "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}  # fmt: skip
    files = files_of(method)
    # The method's real types are described, although the server registers raw-bytes handlers for them.
    generate = next(m for m in files["rillet/v1/inference_service.proto"].service[0].method if m.name == "Generate")
    assert (generate.input_type, generate.output_type, generate.server_streaming) == (
        ".rillet.v1.GenerateRequest", ".rillet.v1.GenerateResponse", True
    )  # fmt: skip
    assert {"google/rpc/status.proto", "google/protobuf/duration.proto", "rillet/v1/generation.proto"} <= set(files)
    assert "rillet/v1/inference_service.proto" in files_of(field)
    v1 = files_of(service)["grpc/reflection/v1/reflection.proto"]
    assert v1.package == "grpc.reflection.v1"
    assert v1.service[0].method[0].input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


async def start_serve() -> tuple[asyncio.subprocess.Process, int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rillet.server.cli", "serve", "--port", "0", "--text-engine", "synthetic",
        "--speech-engine", "none", stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "RILLET_SYNTHETIC__TOKENS_PER_SECOND": "2000"},
    )  # fmt: skip
    assert process.stderr is not None
    while line := await asyncio.wait_for(process.stderr.readline(), timeout=60):
        if match := re.search(rb"serving .* on [\d.]+:(\d+)", line):
            return process, int(match.group(1))
    raise AssertionError("the server never said where it serves")


def tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: `make tools` installs the pinned grpcurl and ghz")
    return str(path)


async def run(*argv: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, out.decode()
    return out.decode()


@pytest.mark.timeout(180)
async def test_grpcurl_describe_and_ghz_by_reflection_against_rillet_serve(tmp_path: Path) -> None:
    """The tools users reach for work by reflection alone: no .proto files, no flags per file."""
    grpcurl, ghz = tool("grpcurl"), tool("ghz")
    process, port = await start_serve()
    target = f"127.0.0.1:{port}"
    try:
        described = await run(grpcurl, "-plaintext", target, "describe", f"{SERVICE}.Generate")
        assert "rpc Generate ( .rillet.v1.GenerateRequest ) returns ( stream .rillet.v1.GenerateResponse )" in described
        message = await run(grpcurl, "-plaintext", target, "describe", "rillet.v1.SessionResponse")
        assert "oneof kind" in message
        assert "uint64 seq = 2;" in message
        streamed = await run(
            grpcurl, "-plaintext", "-d", '{"params": {"text": "hello", "max_tokens": 3}}', target,
            f"{SERVICE}/Generate",
        )  # fmt: skip
        assert '"reason": "FINISH_REASON_LENGTH"' in streamed
        report = tmp_path / "ghz.json"
        await run(
            ghz, "--insecure", "--call", f"{SERVICE}/Generate", "-d", '{"params": {"text": "hi", "max_tokens": 2}}',
            "-n", "20", "-c", "2", "--format", "json", "-o", str(report), target,
        )  # fmt: skip
        result = json.loads(report.read_text())
        assert result["count"] == 20
        assert result["statusCodeDistribution"] == {"OK": 20}
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=30)


def test_protoset_loads_in_the_tools(tmp_path: Path) -> None:
    """`make protoset`'s command writes a descriptor set grpcurl reads with no server at all."""
    buf = shutil.which("buf", path=str(Path(sys.executable).parent))
    assert buf is not None
    protoset = tmp_path / "rillet.protoset"
    asyncio.run(
        run(buf, "build", str(ROOT / "proto"), "--path", str(ROOT / "proto" / "rillet"), "--as-file-descriptor-set",
            "-o", str(protoset))
    )  # fmt: skip
    listed = asyncio.run(run(tool("grpcurl"), "-protoset", str(protoset), "describe", f"{SERVICE}.Session"))
    assert "rpc Session ( stream .rillet.v1.SessionRequest ) returns ( stream .rillet.v1.SessionResponse )" in listed
