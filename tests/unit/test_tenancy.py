"""The tenant ledger: per-tenant call and request limits, the server-wide call limit, and counts back at zero."""

from __future__ import annotations

import pytest

from rillet.server.errors import ResourceExhausted
from rillet.server.tenancy import TenantLedger, TenantLimits


def ledger(max_calls: int = 10) -> TenantLedger:
    limits = {"acme": TenantLimits(max_sessions=2, max_requests=3), "beta": TenantLimits(5, 5)}
    return TenantLedger(limits, max_calls=max_calls, retry_after_s=0.25)


def test_a_tenants_calls_are_limited_and_come_back() -> None:
    tenants = ledger()
    with tenants.open("acme"), tenants.open("acme") as second:
        assert second.tenant == "acme"
        with pytest.raises(ResourceExhausted) as caught, tenants.open("acme"):
            pass
        assert caught.value.reason == "TENANT_SESSION_LIMIT"
        assert caught.value.retry_after == 0.25
        assert caught.value.metadata == {"tenant": "acme", "limit": "2"}
        with tenants.open("beta"):  # other tenants are unaffected
            assert tenants.calls == 3
    assert tenants.calls == 0
    assert tenants.usage("acme") == (0, 0)
    with tenants.open("acme"):  # the places came back
        pass


def test_requests_are_limited_across_a_tenants_calls() -> None:
    tenants = ledger()
    with tenants.open("acme") as one, tenants.open("acme") as two:
        one.start_request()
        one.start_request()
        two.start_request()
        assert tenants.usage("acme") == (2, 3)
        with pytest.raises(ResourceExhausted) as caught:
            two.start_request()
        assert caught.value.reason == "TENANT_REQUEST_LIMIT"
        assert caught.value.retry_after == 0.25
        assert two.requests == 1  # a refused request holds nothing
        one.end_request()
        two.start_request()
        assert (one.requests, two.requests) == (1, 2)
        with tenants.open("beta") as other:  # another tenant's count is its own
            other.start_request()
            assert tenants.usage("beta") == (1, 1)


def test_closing_a_call_returns_the_requests_its_session_did_not_end() -> None:
    tenants = ledger()
    with tenants.open("acme") as survivor:
        with tenants.open("acme") as ended:
            ended.start_request()
            ended.start_request()
        ended.end_request()  # a late end after the call closed changes nothing
        assert tenants.usage("acme") == (1, 0)
        for _ in range(3):
            survivor.start_request()
        with pytest.raises(RuntimeError):
            ended.start_request()
    assert tenants.usage("acme") == (0, 0)


def test_an_unbalanced_end_request_is_a_bug() -> None:
    with ledger().open("acme") as quota, pytest.raises(RuntimeError):
        quota.end_request()


def test_the_server_wide_call_limit_covers_every_tenant() -> None:
    tenants = ledger(max_calls=2)
    with tenants.open(""), tenants.open("beta"):
        with pytest.raises(ResourceExhausted) as caught, tenants.open("acme"):
            pass
        assert caught.value.reason == "SERVER_SESSION_LIMIT"
        assert caught.value.metadata == {"limit": "2"}
        assert tenants.usage("acme") == (0, 0)  # the refused call left nothing behind
    assert tenants.calls == 0


def test_the_anonymous_tenant_has_no_tenant_limits() -> None:
    tenants = ledger(max_calls=100)
    with tenants.open("") as quota:
        assert quota.tenant == ""
        for _ in range(1000):
            quota.start_request()
        assert tenants.usage("") == (1, 1000)


def test_a_quota_closes_once() -> None:
    tenants = ledger()
    first = tenants.open("acme")
    second = tenants.open("acme")
    second.start_request()
    second.close()
    second.close()  # the gate's finally and a `with` exit may both close: the place comes back once
    assert tenants.usage("acme") == (1, 0)
    assert tenants.calls == 1
    first.close()
    assert tenants.calls == 0
    assert tenants.usage("acme") == (0, 0)
