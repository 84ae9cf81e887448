"""The channel policy: targets, balancing, retries, keepalive, TLS and token, frozen in one ChannelConfig."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from rillet.client._tls import TlsOptions

HEALTH_SERVICE = "rillet.v1.InferenceService"
"""The grpc.health.v1 service name a balanced channel watches on each backend (NOT_SERVING: warming, draining)."""

MAX_RECEIVE_BYTES = 16 * 1024 * 1024
"""The largest message the client accepts (the server's default limit is 4 MiB)."""


WEIGHTED_ROUND_ROBIN = {
    "enableOobLoadReport": True,
    "oobReportingPeriod": "1s",
    "blackoutPeriod": "2s",
    "weightUpdatePeriod": "1s",
    "weightExpirationPeriod": "60s",
}
"""gRPC's weighted_round_robin (gRFC A58) on the servers' out-of-band ORCA reports (C-core's camelCase keys).

Each backend reports its load every second on one ORCA stream per connection; a backend's weight is its requests per
second over its utilization (slots, queue and KV cache in use: the server's load.py), used once reports have come for
`blackoutPeriod` and dropped after `weightExpirationPeriod` without one. A backend that reports nothing (an older
server) gets the mean weight, so mixed fleets balance as round_robin would. Out-of-band rather than per-call reports:
a streamed request's per-call report comes only when it ends, and sessions last long.
"""


def service_config(*, balanced: bool, weighted: bool = True) -> str:
    """The channel's gRPC service config (JSON).

    Retries: gRPC retries UNAVAILABLE only until the first response message arrives: ListModels, the control RPCs,
    and one-shot streams before their first token or chunk. A stream that has started is never replayed (it would
    duplicate output); sessions are not retried at all, nor is Abort (a second one would find nothing).

    Balancing (`balanced`): calls are spread over every address the target resolves to, skipping backends whose
    grpc.health.v1 Watch of HEALTH_SERVICE says NOT_SERVING (warming up, draining) and backends that are down; gRPC
    reconnects to those by itself (with backoff) and takes them back once they serve. A call refused by a draining
    backend before its first output is retried on the next one. `weighted`: by the backends' load reports
    (WEIGHTED_ROUND_ROBIN), so new calls go where there is room; otherwise plain round_robin.
    """
    retried = [
        *({"service": "rillet.v1.InferenceService", "method": m} for m in ("ListModels", "Generate", "Synthesize")),
        *(
            {"service": "rillet.v1.ControlService", "method": m}
            for m in ("GetServerInfo", "GetLoad", "WatchLoad", "Tokenize", "Detokenize", "CountTokens")
        ),
    ]
    config: dict[str, Any] = {
        "methodConfig": [
            {
                "name": retried,
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
    if balanced:
        policy = {"weighted_round_robin": WEIGHTED_ROUND_ROBIN} if weighted else {"round_robin": {}}
        config["loadBalancingConfig"] = [policy]
        config["healthCheckConfig"] = {"serviceName": HEALTH_SERVICE}
    return json.dumps(config)


def channel_target(target: str | Sequence[str], round_robin: bool | None = None) -> tuple[str, bool]:
    """The gRPC target for `target`, and whether calls are balanced round_robin over its backends.

    `target` is a gRPC target string or a list of "host:port" addresses (IP literals: a list of names is one DNS
    name away, "dns:///name:port"). Unless `round_robin` says otherwise, a target that names several backends is
    balanced: a list of two or more addresses, an "ipv4:"/"ipv6:" target with several, or any "dns:" target (every
    address the name resolves to, e.g. a Kubernetes headless Service). A plain "host:port" connects to one backend
    at a time (gRPC's pick_first), so the server's own errors (UNAVAILABLE WARMING_UP, ...) reach the caller.
    """
    if isinstance(target, str):
        several = target.startswith("dns:") or (target.startswith(("ipv4:", "ipv6:")) and "," in target)
        return target, several if round_robin is None else round_robin
    addresses = list(target)
    if not addresses:
        raise ValueError("no address to connect to")
    families = {_ip_family(address) for address in addresses}
    if len(families) > 1:
        raise ValueError("a list of addresses must be all IPv4 or all IPv6")
    joined = f"{families.pop()}:{','.join(addresses)}"
    return joined, len(addresses) > 1 if round_robin is None else round_robin


def _ip_family(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    try:
        ip = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        raise ValueError(
            f"{address!r}: a list of addresses takes IP literals; for a name use one target, 'dns:///{address}'"
        ) from None
    if ip.version == 6 and not host.startswith("["):
        raise ValueError(f"{address!r}: write an IPv6 address in brackets, [addr]:port")
    return f"ipv{ip.version}"


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """HTTP/2 keepalive: a ping after `time_s` without activity; the connection is dropped if no answer in `timeout_s`.

    A connection whose peer vanished without a word is noticed within `time_s + timeout_s`, not at the next call.
    A Rillet server accepts pings 10 s apart or more.
    """

    time_s: float = 30.0
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.time_s <= 0 or self.timeout_s <= 0:
            raise ValueError("keepalive times must be positive")


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """How a client reaches a Rillet server, built once (`Client.connect` makes one from its arguments).

    - `target`: "host:port", any gRPC target ("dns:///name:port", "ipv4:a:p,b:p"), or a list of "ip:port"
      addresses; targets naming several backends are balanced (`channel_target`; `round_robin` overrides), by the
      backends' load reports unless `weighted` is False (then plain round_robin; see `service_config`).
    - `connections`: channels opened by `open_all` (each its own TCP connection).
    - `tls`: TLS (mutual TLS with a client certificate); without it the connection is plaintext.
    - `token`: sent on every call as `authorization: Bearer <token>` (as call credentials under TLS, as plain
      metadata otherwise: `metadata()`).
    - `keepalive`, and `options`: extra gRPC channel arguments, applied last.
    """

    target: str | Sequence[str]
    round_robin: bool | None = None
    weighted: bool = True
    connections: int = 1
    tls: TlsOptions | None = None
    token: str | None = None
    keepalive: KeepAlive = KeepAlive()
    options: Sequence[tuple[str, str | int]] = ()
    grpc_target: str = field(init=False)
    """The gRPC target string `target` names."""
    balanced: bool = field(init=False)
    """Whether calls are balanced over the target's backends (weighted_round_robin, or round_robin)."""

    def __post_init__(self) -> None:
        token = self.token
        if token is not None and (not token or token != token.strip() or "\n" in token):
            raise ValueError("a bearer token must be non-empty, without surrounding whitespace or newlines")
        if self.connections < 1:
            raise ValueError("connections must be at least 1")
        target = self.target if isinstance(self.target, str) else tuple(self.target)
        grpc_target, balanced = channel_target(target, self.round_robin)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "options", tuple(self.options))
        object.__setattr__(self, "grpc_target", grpc_target)
        object.__setattr__(self, "balanced", balanced)

    def channel_options(self) -> list[tuple[str, str | int]]:
        """The gRPC channel arguments: limits, keepalive, retries, the service config, then `options`."""
        merged: dict[str, str | int] = {
            "grpc.max_receive_message_length": MAX_RECEIVE_BYTES,
            "grpc.keepalive_time_ms": round(self.keepalive.time_s * 1000),
            "grpc.keepalive_timeout_ms": round(self.keepalive.timeout_s * 1000),
            "grpc.enable_retries": 1,
            "grpc.service_config": service_config(balanced=self.balanced, weighted=self.weighted),
        }
        if self.tls is not None and self.tls.server_name is not None:
            merged["grpc.ssl_target_name_override"] = self.tls.server_name
        if self.connections > 1:
            merged["grpc.use_local_subchannel_pool"] = 1  # else channels to one target share one connection
        merged.update(self.options)
        return list(merged.items())

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """What every call carries: the token, on a plaintext connection (gRPC sends call credentials only over TLS)."""
        if self.token is None or self.tls is not None:
            return ()
        return (("authorization", f"Bearer {self.token}"),)

    def open(self) -> grpc.aio.Channel:
        """One new channel (reads the TLS files); its caller closes it."""
        [channel] = self._open(1)
        return channel

    def open_all(self) -> list[grpc.aio.Channel]:
        """`connections` new channels."""
        return self._open(self.connections)

    def _open(self, count: int) -> list[grpc.aio.Channel]:
        options = self.channel_options()
        if self.tls is None:
            return [grpc.aio.insecure_channel(self.grpc_target, options=options) for _ in range(count)]
        credentials = self.tls.credentials()
        if self.token is not None:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(self.token)
            )
        return [grpc.aio.secure_channel(self.grpc_target, credentials, options=options) for _ in range(count)]
