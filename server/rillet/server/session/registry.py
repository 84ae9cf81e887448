"""The requests in flight on this server, by tenant and request id: what ControlService.Abort reaches."""

from __future__ import annotations

from rillet.server.session.request import CancelReason, Request

__all__ = ["RequestRegistry"]


class RequestRegistry:
    """A table of in-flight requests keyed by tenant first, then by request id (several calls may share an id).

    Invariants:
    - Tenant-scoped: every lookup is made under the caller's tenant, so an abort can only ever see that tenant's
      requests; another tenant's request under the same id is not there to be found.
    - Released exactly once: a session adds a request when its task starts and releases it when it forgets the
      request (its terminal output delivered, or the call ended); `release` of a request not in the table does
      nothing, so the two ways a session forgets a request cannot remove it twice, nor remove a newer request that
      reuses its id. Idle tenants and ids leave no entry behind.
    """

    def __init__(self) -> None:
        self._tenants: dict[str, dict[str, list[Request]]] = {}

    def __len__(self) -> int:
        return sum(len(held) for ids in self._tenants.values() for held in ids.values())

    def add(self, tenant: str, request: Request) -> None:
        """Hold `request` under `tenant` until `release`."""
        self._tenants.setdefault(tenant, {}).setdefault(request.request_id, []).append(request)
        request.registered = True

    def release(self, tenant: str, request: Request) -> None:
        """Take `request` out of the table; nothing when it is not in it (released already, or never added)."""
        if not request.registered:
            return
        request.registered = False
        ids = self._tenants[tenant]
        held = ids[request.request_id]
        held.remove(request)
        if not held:
            del ids[request.request_id]
            if not ids:
                del self._tenants[tenant]

    def abort(self, tenant: str, request_id: str) -> list[str]:
        """Cancel (FINISH_REASON_CANCELLED) the tenant's requests under `request_id`; the ids of those it ended.

        A request already ending (its terminal output set) is not counted: it ends as it was going to.
        """
        held = self._tenants.get(tenant, {}).get(request_id, ())
        return [r.request_id for r in list(held) if r.cancel(CancelReason.ABORTED)]

    def abort_all(self, tenant: str) -> list[str]:
        """Cancel every request of the tenant; the ids of those it ended."""
        held = [r for requests in self._tenants.get(tenant, {}).values() for r in requests]
        return [r.request_id for r in held if r.cancel(CancelReason.ABORTED)]
