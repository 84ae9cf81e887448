"""The tenant ledger: calls open and requests in flight, per tenant and for the whole server, refused past limits."""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass

from rillet.server.errors import ResourceExhausted
from rillet.server.reasons import Reason

__all__ = [
    "TenantLedger",
    "TenantLimits",
    "TenantQuota",
    "cache_scope",
    "current_quota",
    "current_tenant",
    "use_quota",
    "use_tenant",
]


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """What one tenant may hold at once (None: no limit, the "" tenant of a server without auth), and its scope.

    Its requests reuse cached prompts only of requests of the same `cache_scope` (GenerationRequest.cache_scope).
    """

    max_sessions: int | None
    max_requests: int | None
    cache_scope: str = ""


UNLIMITED = TenantLimits(None, None)


def cache_scope(tenant: str, group: str | None) -> str:
    """The prefix-cache scope of `tenant`: its own, or its group's; the two kinds of name can never coincide."""
    return f"group:{group}" if group is not None else f"tenant:{tenant}"


@dataclass(slots=True)
class _Counters:
    limits: TenantLimits
    sessions: int = 0
    requests: int = 0


class TenantQuota:
    """One call's handle on its tenant's counters; the session takes and returns request slots through it.

    Invariant: the requests this quota holds are counted in its tenant's counter exactly once; closing the call
    returns any the session did not end, so a tenant's counters come back to zero when its calls end.
    """

    def __init__(self, ledger: TenantLedger, tenant: str, counters: _Counters) -> None:
        self.tenant = tenant
        self.cache_scope = counters.limits.cache_scope
        self._ledger = ledger
        self._counters = counters
        self._held = 0
        self._closed = False

    @property
    def requests(self) -> int:
        """Requests this call holds now."""
        return self._held

    def start_request(self) -> None:
        """Count one more request in flight; ResourceExhausted(TENANT_REQUEST_LIMIT) when the tenant is at its limit."""
        if self._closed:
            raise RuntimeError("start_request on a call that has ended")
        limit = self._counters.limits.max_requests
        if limit is not None and self._counters.requests >= limit:
            raise ResourceExhausted(
                f"tenant {self.tenant!r} has {limit} requests in flight, its limit; retry when one ends",
                retry_after=self._ledger.retry_after_s,
                reason=Reason.TENANT_REQUEST_LIMIT,
                metadata={"tenant": self.tenant, "limit": str(limit)},
            )
        self._counters.requests += 1
        self._held += 1

    def end_request(self) -> None:
        """Return one request's slot. After the call has closed (which returned them all) this does nothing."""
        if self._held == 0:
            if self._closed:
                return
            raise RuntimeError("end_request without a matching start_request")
        self._held -= 1
        self._counters.requests -= 1

    def close(self) -> None:
        """End the call: return its place and every request it still holds. Later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        self._ledger._closed(self.tenant, self._counters, self._held)
        self._held = 0

    def __enter__(self) -> TenantQuota:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class TenantLedger:
    """Counts the calls (sessions and one-shot streams) and requests of every tenant, and of the server.

    Invariants, enforced in `open` and `TenantQuota.start_request` (all on the event loop, so without locks): the
    server's open calls never exceed `max_calls`; a tenant's open calls and requests in flight never exceed its
    limits. Every count returns to zero when the calls end.
    """

    def __init__(self, limits: Mapping[str, TenantLimits], *, max_calls: int, retry_after_s: float) -> None:
        self._limits = dict(limits)
        self._max_calls = max_calls
        self.retry_after_s = retry_after_s  # the retry hint of every refusal, its quotas' included
        self._calls = 0
        self._tenants: dict[str, _Counters] = {}

    @property
    def calls(self) -> int:
        """Calls open now, every tenant."""
        return self._calls

    def usage(self, tenant: str) -> tuple[int, int]:
        """(calls open, requests in flight) of one tenant."""
        counters = self._tenants.get(tenant)
        return (counters.sessions, counters.requests) if counters is not None else (0, 0)

    def open(self, tenant: str) -> TenantQuota:
        """Hold a call for `tenant` ("": no tenant limits) until its quota closes; ResourceExhausted past limits.

        The quota closes with `close` or at the end of a `with` block. Tenants other than "" must be among the
        configured ones. Not a generator-based context manager: the auth gate opens one on every call's path.
        """
        if self._calls >= self._max_calls:
            raise ResourceExhausted(
                f"the server has {self._max_calls} calls open, its limit; retry later",
                retry_after=self.retry_after_s,
                reason=Reason.SERVER_SESSION_LIMIT,
                metadata={"limit": str(self._max_calls)},
            )
        counters = self._tenants.get(tenant)
        if counters is None:
            limits = UNLIMITED if tenant == "" else self._limits[tenant]
            counters = self._tenants[tenant] = _Counters(limits)
        limit = counters.limits.max_sessions
        if limit is not None and counters.sessions >= limit:
            raise ResourceExhausted(
                f"tenant {tenant!r} has {limit} calls open, its limit; retry when one ends",
                retry_after=self.retry_after_s,
                reason=Reason.TENANT_SESSION_LIMIT,
                metadata={"tenant": tenant, "limit": str(limit)},
            )
        counters.sessions += 1
        self._calls += 1
        return TenantQuota(self, tenant, counters)

    def _closed(self, tenant: str, counters: _Counters, held: int) -> None:
        """A quota closed (once): its call and the `held` requests it had not ended leave the counts."""
        counters.requests -= held
        counters.sessions -= 1
        self._calls -= 1
        if counters.sessions == 0:
            del self._tenants[tenant]  # idle tenants cost nothing


_current: contextvars.ContextVar[TenantQuota | None] = contextvars.ContextVar("rillet_tenant_quota", default=None)


def current_quota() -> TenantQuota | None:
    """The quota of the call being handled: set by the auth gate in the handler's own task."""
    return _current.get()


def use_quota(quota: TenantQuota) -> None:
    """Make `quota` the current call's (the auth gate calls this in the handler's task, before the handler)."""
    _current.set(quota)


_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("rillet_tenant", default="")


def current_tenant() -> str:
    """The tenant the call being handled acts for ("" without token auth): set by the auth gate, in its task."""
    return _tenant.get()


def use_tenant(tenant: str) -> None:
    """Make `tenant` the current call's (the auth gate calls this in the handler's task, before the handler)."""
    _tenant.set(tenant)
