"""Security through the real server and SDK: TLS, mTLS, bearer tokens and tenants, call and connection limits."""

from __future__ import annotations

import asyncio
import datetime
import gc
import ipaddress
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rillet.client import (
    Client,
    Finished,
    ResourceExhaustedError,
    Session,
    TlsOptions,
    UnauthenticatedError,
    UnavailableError,
)
from rillet.server.app import RilletServer
from rillet.server.engine.synthetic import synthetic_text
from tests.conftest import ServerFactory, eventually
from tests.integration.test_process import start_server

SLOW = {"synthetic": {"tokens_per_second": 20.0, "first_output_delay_s": 0.0}}


# Certificates ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A CA with a server certificate (127.0.0.1, localhost) and a client certificate, and an unrelated second CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    """A certificate for `key`: self-signed CA when `issuer` is None, else a leaf for `usage` signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage or ExtendedKeyUsageOID.SERVER_AUTH]), False)
        if usage == ExtendedKeyUsageOID.SERVER_AUTH:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _write(directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        (directory / f"{name}.key").write_bytes(pem)
    return directory / f"{name}.pem"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in ("ca", "server", "client", "other", "stranger")}
    ca = _issue("Rillet test CA", keys["ca"], None)
    other = _issue("Unrelated CA", keys["other"], None)
    server = _issue("rillet server", keys["server"], (ca, keys["ca"]), usage=ExtendedKeyUsageOID.SERVER_AUTH)
    client = _issue("tenant client", keys["client"], (ca, keys["ca"]), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    stranger = _issue("stranger", keys["stranger"], (other, keys["other"]), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    _write(directory, "server", server, keys["server"])
    _write(directory, "client", client, keys["client"])
    _write(directory, "stranger", stranger, keys["stranger"])
    return Pki(
        ca=_write(directory, "ca", ca),
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_ca=_write(directory, "other-ca", other),
        other_client_cert=directory / "stranger.pem",
        other_client_key=directory / "stranger.key",
    )


def tls_settings(pki: Pki, *, mutual: bool = False) -> dict[str, object]:
    tls = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}
    if mutual:
        tls["client_ca_file"] = str(pki.ca)
    return {"tls": tls}


async def answers(client: Client) -> str:
    """Generate a little through `client`; its text."""
    return (await client.generate("secure hello", max_tokens=3).collect()).text


# TLS and mutual TLS ------------------------------------------------------------------------------------------------


async def test_tls_serves_a_client_that_trusts_the_ca(make_server: ServerFactory, pki: Pki) -> None:
    server = await make_server(security=tls_settings(pki))
    async with Client.connect(f"127.0.0.1:{server.port}", tls=TlsOptions(ca_file=pki.ca)) as client:
        assert await answers(client)
        assert [m.name for m in await client.list_models()] == ["synthetic-test"]
    async with Client.connect(f"localhost:{server.port}", tls=TlsOptions(ca_file=pki.ca)) as client:
        assert await answers(client)


async def test_tls_refuses_a_client_with_the_wrong_ca_or_name_or_no_tls(make_server: ServerFactory, pki: Pki) -> None:
    server = await make_server(security=tls_settings(pki))
    target = f"127.0.0.1:{server.port}"
    for tls in (TlsOptions(ca_file=pki.other_ca), TlsOptions(ca_file=pki.ca, server_name="elsewhere.invalid"), None):
        async with Client.connect(target, tls=tls) as client:
            with pytest.raises(UnavailableError):
                await client.list_models(timeout=5)
            with pytest.raises(UnavailableError):
                await answers(client)


async def test_mutual_tls_serves_a_client_certificate_from_the_ca(make_server: ServerFactory, pki: Pki) -> None:
    server = await make_server(security=tls_settings(pki, mutual=True))
    tls = TlsOptions(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    async with Client.connect(f"127.0.0.1:{server.port}", tls=tls) as client:
        assert await answers(client)


async def test_mutual_tls_refuses_a_client_without_a_certificate_or_with_a_strangers(
    make_server: ServerFactory, pki: Pki
) -> None:
    server = await make_server(security=tls_settings(pki, mutual=True))
    stranger = TlsOptions(ca_file=pki.ca, cert_file=pki.other_client_cert, key_file=pki.other_client_key)
    for tls in (TlsOptions(ca_file=pki.ca), stranger):
        async with Client.connect(f"127.0.0.1:{server.port}", tls=tls) as client:
            with pytest.raises(UnavailableError):
                await client.list_models(timeout=5)


def test_tls_options_need_both_halves_of_a_client_certificate(pki: Pki) -> None:
    with pytest.raises(ValueError, match="cert_file and key_file"):
        TlsOptions(ca_file=pki.ca, cert_file=pki.client_cert)


# Bearer tokens and tenants -----------------------------------------------------------------------------------------

ACME = "acme-7c1f0d9e"
BETA = "beta-52aa01c3"


def tenants(**acme_limits: int) -> dict[str, object]:
    return {"acme": {"tokens": ["acme-old-token", ACME], **acme_limits}, "beta": {"tokens": [BETA]}}


async def session_answers(client: Client) -> str:
    """Generate a little in a session of `client`; its text. The call's failure may surface at the start or later."""
    async with client.session() as session:
        stream = await session.generate("in a session", max_tokens=2)
        return (await stream.collect()).text


async def test_tokens_over_tls_admit_every_tenants_token(make_server: ServerFactory, pki: Pki) -> None:
    server = await make_server(security={**tls_settings(pki), "tenants": tenants()})
    for token in ("acme-old-token", ACME, BETA):
        async with Client.connect(f"127.0.0.1:{server.port}", tls=TlsOptions(ca_file=pki.ca), token=token) as client:
            assert await answers(client)
            assert await session_answers(client)


async def test_a_wrong_or_missing_token_is_unauthenticated(make_server: ServerFactory, pki: Pki) -> None:
    server = await make_server(security={**tls_settings(pki), "tenants": tenants()})
    tls = TlsOptions(ca_file=pki.ca)
    for token, reason in ((ACME[:-1], "INVALID_TOKEN"), (ACME + "0", "INVALID_TOKEN"), (None, "MISSING_TOKEN")):
        async with Client.connect(f"127.0.0.1:{server.port}", tls=tls, token=token) as client:
            with pytest.raises(UnauthenticatedError) as one_shot:
                await answers(client)
            assert one_shot.value.reason == reason
            with pytest.raises(UnauthenticatedError) as listing:
                await client.list_models()
            assert listing.value.reason == reason
            with pytest.raises(UnauthenticatedError):
                await session_answers(client)
    assert server.tenants.calls == 0


async def test_tokens_work_without_tls_as_plain_metadata(make_server: ServerFactory) -> None:
    server = await make_server(security={"tenants": tenants()})
    async with Client.connect(f"127.0.0.1:{server.port}", token=BETA) as client:
        assert await answers(client)
    async with Client.connect(f"127.0.0.1:{server.port}", metadata=[("authorization", "bearer " + ACME)]) as client:
        assert await answers(client)  # the scheme is case-insensitive
    async with Client.connect(f"127.0.0.1:{server.port}", metadata=[("authorization", ACME)]) as client:
        with pytest.raises(UnauthenticatedError):
            await answers(client)  # a token without its scheme


async def test_tokens_come_from_a_toml_file(make_server: ServerFactory, tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(f'[tenants.gamma]\ntokens = ["{ACME}-file"]\nmax_sessions = 1\n')
    server = await make_server(security={"tenants_file": str(path)})
    async with Client.connect(f"127.0.0.1:{server.port}", token=f"{ACME}-file") as client:
        assert await answers(client)
    async with Client.connect(f"127.0.0.1:{server.port}", token=ACME) as client:
        with pytest.raises(UnauthenticatedError):
            await answers(client)


async def test_health_needs_no_token_and_reflection_does(make_server: ServerFactory) -> None:
    server = await make_server(security={"tenants": tenants()})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await list_services(channel, metadata=())
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "rillet.v1.InferenceService" in await list_services(
            channel, metadata=(("authorization", f"Bearer {BETA}"),)
        )


async def test_an_unknown_method_is_unimplemented_with_or_without_a_token(make_server: ServerFactory) -> None:
    """The gate wraps the registered services' handlers; a name none of them serves stays UNIMPLEMENTED."""
    server = await make_server(security={"tenants": tenants()})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for name in ("/rillet.v1.InferenceService/Nope", "/grpc.reflection.v1.ServerReflection/Nope", "/x.Y/Z"):
            for metadata in ((), (("authorization", f"Bearer {BETA}"),)):
                call = channel.unary_unary(name, request_serializer=bytes, response_deserializer=bytes)
                with pytest.raises(grpc.aio.AioRpcError) as unknown:
                    await call(b"", metadata=metadata)
                assert unknown.value.code() is grpc.StatusCode.UNIMPLEMENTED
        assert await list_services(channel, metadata=(("authorization", f"Bearer {BETA}"),))  # the gate still works


async def test_reflection_can_be_turned_off(make_server: ServerFactory) -> None:
    server = await make_server(security={"reflection": False})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as off:
            await list_services(channel, metadata=())
        assert off.value.code() is grpc.StatusCode.UNIMPLEMENTED
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def list_services(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> set[str]:
    async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    names: set[str] = set()
    async for response in stub.ServerReflectionInfo(ask(), metadata=metadata, timeout=5):
        names |= {s.name for s in response.list_services_response.service}
    return names


# Limits on calls and connections -----------------------------------------------------------------------------------


async def open_session(client: Client, server: RilletServer, calls: int) -> Session:
    """A session whose call the server holds (it counts `calls` calls once this one is in)."""
    session = client.session()
    await session.generate("keep the call open", max_tokens=200)
    await eventually(lambda: server.tenants.calls == calls)
    return session


async def test_a_tenant_may_hold_only_its_sessions(make_server: ServerFactory) -> None:
    server = await make_server(security={"tenants": tenants(max_sessions=2)}, **SLOW)
    target = f"127.0.0.1:{server.port}"
    async with Client.connect(target, token=ACME) as acme, Client.connect(target, token=BETA) as beta:
        first = await open_session(acme, server, 1)
        second = await open_session(acme, server, 2)
        with pytest.raises(ResourceExhaustedError) as over:
            await answers(acme)
        assert over.value.reason == "TENANT_SESSION_LIMIT"
        assert over.value.retry_after == 1.0
        assert over.value.metadata == {"tenant": "acme", "limit": "2"}
        with pytest.raises(ResourceExhaustedError, match="TENANT_SESSION_LIMIT"):
            await session_answers(acme)
        assert await answers(beta)  # another tenant is unaffected
        await first.aclose()
        await eventually(lambda: server.tenants.usage("acme")[0] == 1)
        assert await answers(acme)  # the place came back
        await second.aclose()
    await eventually(lambda: server.tenants.calls == 0)


async def test_a_tenant_may_have_only_its_requests_in_flight(make_server: ServerFactory) -> None:
    server = await make_server(security={"tenants": tenants(max_requests=2)}, **SLOW)
    target = f"127.0.0.1:{server.port}"
    async with Client.connect(target, token=ACME) as acme, Client.connect(target, token=BETA) as beta:
        async with acme.session() as session:
            running = [await session.generate("keep going", max_tokens=200) for _ in range(2)]
            await eventually(lambda: server.tenants.usage("acme") == (1, 2))
            third = await session.generate("one too many", max_tokens=2)
            with pytest.raises(ResourceExhaustedError) as over:
                await third.collect()
            assert over.value.reason == "TENANT_REQUEST_LIMIT"
            assert over.value.retry_after == 1.0
            with pytest.raises(ResourceExhaustedError, match="TENANT_REQUEST_LIMIT"):
                await answers(acme)  # the limit spans the tenant's calls
            assert await answers(beta)  # another tenant is unaffected
            await running[0].aclose()  # a cancelled request gives its place back
            await eventually(lambda: server.tenants.usage("acme") == (1, 1))
            assert (await (await session.generate("now it fits", max_tokens=2)).collect()).text
        await eventually(lambda: server.tenants.usage("acme") == (0, 0))


async def test_the_server_holds_at_most_max_calls(make_server: ServerFactory) -> None:
    server = await make_server(security={"max_calls": 2}, **SLOW)
    async with Client.connect(f"127.0.0.1:{server.port}") as client:
        sessions = [await open_session(client, server, 1), await open_session(client, server, 2)]
        with pytest.raises(ResourceExhaustedError) as over:
            await answers(client)
        assert over.value.reason == "SERVER_SESSION_LIMIT"
        assert over.value.retry_after == 1.0
        assert [m.name for m in await client.list_models()] == ["synthetic-test"]  # unary calls are not held
        await sessions[0].aclose()
        await eventually(lambda: server.tenants.calls == 1)
        assert await answers(client)
        await sessions[1].aclose()
    await eventually(lambda: server.tenants.calls == 0)


async def test_a_call_cancelled_mid_stream_gives_its_place_back(make_server: ServerFactory) -> None:
    server = await make_server(security={"tenants": tenants(max_sessions=1)}, **SLOW)
    async with Client.connect(f"127.0.0.1:{server.port}", token=ACME) as client:
        async with client.generate("a long answer", max_tokens=200) as stream:
            async for event in stream:
                assert not isinstance(event, Finished)
                break  # leaving cancels the call
        await eventually(lambda: server.tenants.calls == 0)
        assert await answers(client)


async def test_connections_past_max_connections_are_refused(make_server: ServerFactory) -> None:
    server = await make_server(security={"max_connections": 2})
    target = f"127.0.0.1:{server.port}"
    own_connection = [("grpc.use_local_subchannel_pool", 1)]  # else channels to one target share a connection
    clients = [Client.connect(target, options=own_connection) for _ in range(3)]
    try:
        assert await answers(clients[0])
        assert await answers(clients[1])
        with pytest.raises(UnavailableError):
            await clients[2].list_models(timeout=5)
        await clients[2].close()
        await clients[0].close()
        # grpcio >= 1.83 keeps each finished client call in a reference cycle, and the call holds its connection
        # open after the channel closes until the collector runs (grpc/grpc#42125): collect this process's.
        gc.collect()
        # The server frees the closed connection's place once it sees the close; the channel retries until then.
        async with grpc.aio.insecure_channel(target, options=own_connection) as channel:
            await asyncio.wait_for(channel.channel_ready(), timeout=10)
            response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert response.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for client in clients:
            await client.close()


# Content stays out of the logs -------------------------------------------------------------------------------------


async def test_prompts_and_outputs_are_never_logged(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    prompt = "zebra-quokka-8d1e secret prompt"
    caplog.set_level(logging.DEBUG)
    server = await make_server(security={"tenants": tenants()})
    async with Client.connect(f"127.0.0.1:{server.port}", token=ACME) as client:
        result = await client.generate(prompt, max_tokens=8, stop=["zebra-stop-4f2a"]).collect()
        async with client.session() as session:
            stream = await session.generate(prompt, max_tokens=4)
            await stream.collect()
    async with Client.connect(f"127.0.0.1:{server.port}", token="zebra-token-ffff") as intruder:
        with pytest.raises(UnauthenticatedError):
            await answers(intruder)
    logged = "\n".join(record.getMessage() + str(record.exc_info or "") for record in caplog.records)
    assert caplog.records  # the capture works: the server logged its start
    for secret in ("zebra", "quokka", result.text, ACME, "zebra-token"):
        assert secret not in logged


# The `rillet serve` flags ------------------------------------------------------------------------------------------


async def test_serve_flags_turn_on_mutual_tls_and_tenants(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(f'[tenants.acme]\ntokens = ["{ACME}"]\n')
    process, port = await start_server(
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca),
        "--tenants-file", str(path), "--no-reflection", "--max-calls", "4", "--max-connections", "8",
    )  # fmt: skip
    try:
        tls = TlsOptions(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
        async with Client.connect(f"127.0.0.1:{port}", tls=tls, token=ACME) as client:
            assert await answers(client)
        async with Client.connect(f"127.0.0.1:{port}", tls=tls, token=BETA) as client:
            with pytest.raises(UnauthenticatedError):
                await answers(client)
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0


async def test_serve_refuses_a_bad_tenants_file(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text("[tenants.acme]\ntokens = []\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rillet.server.cli", "serve", "--port", "0", "--tenants-file", str(path),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    assert b"invalid tenants" in stderr


async def test_a_tenant_may_fill_only_its_share_of_an_engine_queue(make_server: ServerFactory) -> None:
    server = await make_server(
        security={"tenants": tenants()},
        synthetic={"slots": 1, "tokens_per_second": 20.0, "first_output_delay_s": 0.0},
        scheduler={"max_queue": 4, "tenant_queue_share": 0.5},
    )
    target = f"127.0.0.1:{server.port}"
    async with (
        Client.connect(target, token=ACME) as acme,
        Client.connect(target, token=BETA) as beta,
        acme.session() as acme_session,
        beta.session() as beta_session,
    ):
        running = await acme_session.generate("holds the only slot", max_tokens=200)
        queued = [await acme_session.generate(f"queued {i}", max_tokens=2) for i in range(2)]
        await eventually(lambda: server.tenants.usage("acme") == (1, 3))
        over = await acme_session.generate("past acme's half of the queue", max_tokens=2)
        with pytest.raises(ResourceExhaustedError) as caught:
            await over.collect()
        assert caught.value.reason == "TENANT_QUEUE_SHARE"
        fits = await beta_session.generate("beta still queues", max_tokens=2)
        await running.aclose()
        assert [(await q.collect()).text for q in queued] == [synthetic_text(f"queued {i}", 2) for i in range(2)]
        assert (await fits.collect()).text == synthetic_text("beta still queues", 2)
