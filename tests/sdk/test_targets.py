"""Which targets the SDK balances round_robin (with health checking), and how a list of addresses is spelt."""

from __future__ import annotations

import json

import pytest

from rillet.client._channel import HEALTH_SERVICE, WEIGHTED_ROUND_ROBIN, channel_target, service_config


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("127.0.0.1:50051", ("127.0.0.1:50051", False)),
        ("rillet.internal:50051", ("rillet.internal:50051", False)),
        ("dns:///rillet-headless.ns.svc:50051", ("dns:///rillet-headless.ns.svc:50051", True)),
        ("ipv4:10.0.0.1:50051,10.0.0.2:50051", ("ipv4:10.0.0.1:50051,10.0.0.2:50051", True)),
        ("ipv4:10.0.0.1:50051", ("ipv4:10.0.0.1:50051", False)),
        (["10.0.0.1:50051", "10.0.0.2:50052"], ("ipv4:10.0.0.1:50051,10.0.0.2:50052", True)),
        (["[::1]:50051", "[::1]:50052"], ("ipv6:[::1]:50051,[::1]:50052", True)),
        (["10.0.0.1:50051"], ("ipv4:10.0.0.1:50051", False)),
    ],
)  # fmt: skip
def test_targets_that_name_several_backends_are_balanced(target: str | list[str], expected: tuple[str, bool]) -> None:
    assert channel_target(target) == expected


def test_round_robin_can_be_asked_for_or_refused() -> None:
    assert channel_target("rillet-headless:50051", round_robin=True) == ("rillet-headless:50051", True)
    assert channel_target(["10.0.0.1:1", "10.0.0.2:1"], round_robin=False) == ("ipv4:10.0.0.1:1,10.0.0.2:1", False)


@pytest.mark.parametrize(
    ("addresses", "message"),
    [
        ([], "no address"),
        (["rillet-0:50051", "rillet-1:50051"], "dns:///rillet-0:50051"),
        (["10.0.0.1:50051", "[::1]:50051"], "all IPv4 or all IPv6"),
        (["::1:50051"], "brackets"),
        (["10.0.0.1"], "not host:port"),
    ],
)
def test_a_list_takes_ip_literals_of_one_family(addresses: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        channel_target(addresses)


def test_balancing_watches_health_and_keeps_the_retry_policy() -> None:
    balanced, single = json.loads(service_config(balanced=True)), json.loads(service_config(balanced=False))
    plain = json.loads(service_config(balanced=True, weighted=False))
    assert balanced["loadBalancingConfig"] == [{"weighted_round_robin": WEIGHTED_ROUND_ROBIN}]
    assert WEIGHTED_ROUND_ROBIN["enableOobLoadReport"] is True  # out-of-band: streams report only when they end
    assert plain["loadBalancingConfig"] == [{"round_robin": {}}]
    assert balanced["healthCheckConfig"] == plain["healthCheckConfig"] == {"serviceName": HEALTH_SERVICE}
    assert "loadBalancingConfig" not in single
    assert "healthCheckConfig" not in single
    for config in (balanced, single):
        [method] = config["methodConfig"]
        retried = {(n["service"].removeprefix("rillet.v1."), n["method"]) for n in method["name"]}
        assert retried == {
            ("InferenceService", "ListModels"),
            ("InferenceService", "Generate"),
            ("InferenceService", "Synthesize"),
            *(
                ("ControlService", m)
                for m in ("GetServerInfo", "GetLoad", "WatchLoad", "Tokenize", "Detokenize", "CountTokens")
            ),
        }  # never Session, nor Abort
        assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
