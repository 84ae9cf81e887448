"""Transport security: TLS credentials, bearer tokens mapped to tenants, and the gate that admits each call.

Policy, enforced by `CallGate` on every call before its handler does anything:
- grpc.health.v1 and ORCA's xds.service.orca.v3.OpenRcaService are open to everyone: load balancers, kubelets and
  gRPC clients' own per-backend health and load streams carry no token (ORCA tells server-wide load, no tenant's).
- With token auth on, every other call (InferenceService and reflection) needs `authorization: Bearer <token>`
  naming a configured tenant: missing → UNAUTHENTICATED MISSING_TOKEN, unknown → UNAUTHENTICATED INVALID_TOKEN.
- Session, Generate and Synthesize calls are held in the tenant ledger for their whole life: past the server's
  or the tenant's limit → RESOURCE_EXHAUSTED (SERVER_SESSION_LIMIT, TENANT_SESSION_LIMIT) with RetryInfo.
  The call's TenantQuota is then current (`tenancy.current_quota()`) while its handler runs. So are ControlService
  WatchLoad streams, which stay open as long.
- The call's tenant is current (`tenancy.current_tenant()`) while its handler runs: ControlService.Abort reaches only
  that tenant's requests.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import ssl
import tomllib
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, TypeAlias

import grpc
from pydantic import BaseModel, ConfigDict

from rillet.server.config import SecurityConfig, TenantConfig, TlsConfig
from rillet.server.errors import ResourceExhausted, Unauthenticated
from rillet.server.reasons import Reason
from rillet.server.tenancy import TenantLedger, TenantQuota, use_quota, use_tenant
from rillet.server.transport.handlers import behavior, with_behavior
from rillet.server.transport.servicer import SERVICE_NAME, abort

log = logging.getLogger(__name__)

OPEN_SERVICES = frozenset({"grpc.health.v1.Health", "xds.service.orca.v3.OpenRcaService"})
"""Services any caller may use without a token."""

HELD_METHODS = frozenset(
    (
        *(f"/{SERVICE_NAME}/{method}" for method in ("Session", "Generate", "Synthesize")),
        "/rillet.v1.ControlService/WatchLoad",
    )
)
"""Calls counted in the tenant ledger while they are open (they hold engine work or a stream; ListModels does not)."""


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """TLS credentials from PEM files; with a client CA, clients must present a certificate that chains to it."""
    if tls.cert_file is None or tls.key_file is None:
        raise ValueError("TLS is not configured")
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=tls.client_ca_file.read_bytes() if tls.client_ca_file is not None else None,
        require_client_auth=tls.client_ca_file is not None,
    )


def ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """The same TLS as `server_credentials`, for servers built on Python's ssl (the WebSocket edge: wss)."""
    if tls.cert_file is None or tls.key_file is None:
        raise ValueError("TLS is not configured")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        context.load_verify_locations(tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _TenantsFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tenants: dict[str, TenantConfig]


def load_tenants(security: SecurityConfig) -> dict[str, TenantConfig]:
    """Every configured tenant: those of the settings and those of `tenants_file`; a name may appear once."""
    tenants = dict(security.tenants)
    if security.tenants_file is not None:
        with security.tenants_file.open("rb") as file:
            listed = _TenantsFile.model_validate(tomllib.load(file)).tenants
        both = sorted(set(tenants) & set(listed))
        if both:
            raise ValueError(f"tenants configured twice (settings and {security.tenants_file}): {', '.join(both)}")
        tenants.update(listed)
    if "" in tenants:
        raise ValueError("a tenant needs a name")
    return tenants


class TokenStore:
    """Bearer tokens → tenant names. Only SHA-256 digests are kept; lookups take the same time whichever token matches.

    Every lookup compares the presented token's digest with every known digest (hmac.compare_digest, no early exit),
    so neither the time taken nor the branch taken tells which token, or how much of one, matched.
    """

    def __init__(self, tenants: Mapping[str, TenantConfig]) -> None:
        self._digests: list[tuple[bytes, str]] = []
        seen: dict[bytes, str] = {}
        for name, tenant in tenants.items():
            for token in tenant.tokens:
                digest = _digest(token.get_secret_value())
                if digest in seen:
                    raise ValueError(f"a token is given to two tenants ({seen[digest]!r} and {name!r})")
                seen[digest] = name
                self._digests.append((digest, name))

    def tenant(self, token: str) -> str | None:
        """The tenant `token` acts for, None when it is not a known token."""
        presented = _digest(token)
        found: str | None = None
        for digest, name in self._digests:
            matched = hmac.compare_digest(presented, digest)
            found = name if matched else found
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of the call's `authorization: Bearer <token>` header, None when there is none."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class CallGate:
    """Authenticates each call (when tokens are configured) and holds InferenceService streams in the tenant ledger.

    A handlers.Guard, applied as services register (handlers.GuardedRegistry), not a server interceptor. A method
    with nothing to check (no tokens, not held) keeps its handler as it is.
    """

    def __init__(self, tokens: TokenStore | None, ledger: TenantLedger) -> None:
        self._tokens = tokens
        self._ledger = ledger

    def guard(self, method: str, handler: Handler) -> Handler:
        """`handler` (of the fully qualified `method`) behind the gate: the same kind, the same serializers."""
        held = method in HELD_METHODS
        if self._tokens is None and not held:
            return handler
        served = behavior(handler)
        if not handler.response_streaming:

            async def checked(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> object:
                use_tenant(await self._tenant(context))
                return await served(request, context)

            return with_behavior(handler, checked)

        async def gated(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[object]:
            tenant = "" if self._tokens is None else await self._tenant(context)  # no coroutine without auth
            if tenant:
                use_tenant(tenant)
            quota: TenantQuota | None = None
            if held:
                try:
                    quota = self._ledger.open(tenant)
                except ResourceExhausted as error:
                    await abort(context, error)
                use_quota(quota)  # in the task that runs the handler: the handler reads it on its first step
            try:
                async for response in served(request, context):
                    yield response
            finally:
                if quota is not None:
                    quota.close()

        return with_behavior(handler, gated)

    async def _tenant(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """The tenant the call acts for ("" without token auth); ends the call UNAUTHENTICATED when it has none."""
        if self._tokens is None:
            return ""
        token = bearer_token(context.invocation_metadata())
        if token is None:
            missing = Unauthenticated("this server needs `authorization: Bearer <token>`", reason=Reason.MISSING_TOKEN)
            await abort(context, missing)
        tenant = self._tokens.tenant(token)
        if tenant is None:
            await abort(context, Unauthenticated("the bearer token is not valid", reason=Reason.INVALID_TOKEN))
        return tenant
