"""Tokens, tenants and TLS settings: lookups, the `authorization` header, the tenants file, bad configurations."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rillet.server.config import SecurityConfig, TenantConfig, TlsConfig
from rillet.server.transport.auth import TokenStore, bearer_token, load_tenants


def tenant(*tokens: str) -> TenantConfig:
    return TenantConfig.model_validate({"tokens": tokens})


def test_a_token_maps_to_its_tenant_and_nothing_else_does() -> None:
    store = TokenStore({"acme": tenant("a-1", "a-2"), "beta": tenant("b-1")})
    assert [store.tenant(t) for t in ("a-1", "a-2", "b-1")] == ["acme", "acme", "beta"]
    for stranger in ("", "a-", "a-10", "A-1", "b-1 ", "a-1\x00"):
        assert store.tenant(stranger) is None


def test_one_token_for_two_tenants_is_refused() -> None:
    with pytest.raises(ValueError, match="two tenants"):
        TokenStore({"acme": tenant("shared"), "beta": tenant("shared")})


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        ((("authorization", "Bearer abc"),), "abc"),
        ((("authorization", "bearer  abc "),), "abc"),
        ((("user-agent", "x"), ("authorization", "BEARER abc")), "abc"),
        ((("authorization", "Basic abc"),), None),
        ((("authorization", "Bearer "),), None),
        ((("authorization", "abc"),), None),
        ((("authorization-bin", b"Bearer abc"),), None),
        ((), None),
        (None, None),
    ],
)
def test_the_bearer_token_of_a_call(metadata: tuple[tuple[str, str | bytes], ...] | None, token: str | None) -> None:
    assert bearer_token(metadata) == token


def test_tenants_come_from_settings_and_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text('[tenants.beta]\ntokens = ["b-1"]\nmax_requests = 7\n')
    security = SecurityConfig.model_validate({"tenants": {"acme": {"tokens": ["a-1"]}}, "tenants_file": path})
    tenants = load_tenants(security)
    assert sorted(tenants) == ["acme", "beta"]
    assert (tenants["beta"].max_sessions, tenants["beta"].max_requests) == (64, 7)
    assert "b-1" not in repr(tenants)  # tokens are secrets, even in a repr


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[tenants.acme]\ntokens = ["x"]\n', "configured twice"),
        ('[tenants.beta]\ntokens = ["x"]\nmax_session = 3\n', "max_session"),
        ("[tenants.beta]\ntokens = []\n", "tokens"),
        ('[tenants.""]\ntokens = ["x"]\n', "needs a name"),
        ("[tenants.beta\n", "Expected"),
    ],
)
def test_a_bad_tenants_file_is_refused(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(text)
    security = SecurityConfig.model_validate({"tenants": {"acme": {"tokens": ["a-1"]}}, "tenants_file": path})
    with pytest.raises(ValueError, match=error):
        load_tenants(security)


def test_tls_settings_must_be_complete(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("not read here")
    assert TlsConfig(cert_file=pem, key_file=pem, client_ca_file=pem).enabled
    assert not TlsConfig().enabled
    with pytest.raises(ValidationError, match="both cert_file and key_file"):
        TlsConfig(cert_file=pem)
    with pytest.raises(ValidationError, match="needs the server's cert_file"):
        TlsConfig(client_ca_file=pem)
    with pytest.raises(ValidationError, match="does not point to a file"):
        TlsConfig(cert_file=tmp_path / "missing.pem", key_file=pem)
