"""gRPC server reflection under grpc.reflection.v1 and v1alpha, resolving method and field symbols too."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from rillet.server.transport.handlers import Registry

__all__ = ["V1_SERVICE_NAME", "enable_reflection"]

V1ALPHA_PACKAGE = "grpc.reflection.v1alpha"
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"


class _Reflection(reflection.aio.ReflectionServicer):  # type: ignore[misc]  # grpc_reflection ships no types
    """grpcio-reflection's servicer, plus what its descriptor pool cannot answer: method and field symbols.

    `grpcurl describe rillet.v1.InferenceService.Generate` and ghz ask for the file containing a method; the upb
    pool only finds top-level symbols (messages, enums, services, extensions), so such a name is answered with the
    file of its service or message, as every other gRPC implementation does.
    """

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        return super()._file_containing_symbol(request, _resolvable(self._pool, fully_qualified_name))


def _resolvable(pool: descriptor_pool.DescriptorPool, name: str) -> str:
    """`name`, or the service or message declaring it when `name` is one of its methods or fields."""
    try:
        pool.FindFileContainingSymbol(name)
        return name
    except KeyError:
        parent, _, member = name.rpartition(".")
    try:
        if member in pool.FindServiceByName(parent).methods_by_name:
            return parent
    except KeyError:
        pass
    try:
        message = pool.FindMessageTypeByName(parent)
        if member in message.fields_by_name or member in message.oneofs_by_name:
            return parent
    except KeyError:
        pass
    return name


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """Add grpc.reflection.v1's file to `pool`, so the v1 service describes itself too.

    v1 is v1alpha under a new package name, message for message and field for field (the same wire format), so its
    file is v1alpha's, renamed.
    """
    name = "grpc/reflection/v1/reflection.proto"
    try:
        pool.FindFileByName(name)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = name, V1_PACKAGE
    proto.ClearField("options")
    old, new = f".{V1ALPHA_PACKAGE}.", f".{V1_PACKAGE}."
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(old, new)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    pool.AddSerializedFile(proto.SerializeToString())


def enable_reflection(service_names: Iterable[str], server: Registry) -> None:
    """Serve reflection for `service_names` (and for itself) under both v1 and v1alpha.

    grpcio-reflection serves only v1alpha (grpc/grpc#38576), while current grpcurl, Postman and grpc-java's tools
    ask for v1 first. One servicer answers both: the messages are the same bytes under either name.
    """
    pool = descriptor_pool.Default()
    _add_v1_descriptor(pool)
    names = [*service_names, reflection.SERVICE_NAME, V1_SERVICE_NAME]
    servicer = _Reflection(names, pool=pool)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1_handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": v1_handler}),)
    )
