"""The Helm chart: helm lint, helm template for every value set validated against the Kubernetes schemas (offline,
kubernetes-validate's bundled ones, strict), and what the objects must say to each other and to the server."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rillet.client._channel import HEALTH_SERVICE
from rillet.server.config import Settings
from rillet.server.telemetry import semconv
from rillet.server.transport.servicer import SERVICE_NAME
from tests.conftest import ServerFactory
from tests.deploy.tools import CHART, helm, unknown_settings_variables

VALUE_SETS = {
    "cpu": (),
    "gpu": ("values-gpu.yaml",),
    "all-features": ("ci/all-features-values.yaml",),
    "gpu-all-features": ("values-gpu.yaml", "ci/all-features-values.yaml"),
}
KUBERNETES = ("1.30.0", "1.37.0")  # the oldest and newest minor versions validated (the chart needs >= 1.27)
CUSTOM_RESOURCES = {"ServiceMonitor", "InferencePool"}  # not in kubernetes-validate: checked below
CRDS = Path(__file__).with_name("crds")


def render(value_set: str, kubernetes: str = KUBERNETES[0]) -> list[dict[str, Any]]:
    files = [arg for name in VALUE_SETS[value_set] for arg in ("-f", str(CHART / name))]
    out = helm("template", "rillet", str(CHART), "--namespace", "inference", "--kube-version", kubernetes, *files)
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(name) for name in VALUE_SETS}


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    [found] = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return found


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [main] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(main)


def env(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(docs)["env"] if "value" in e}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_is_clean(value_set: str) -> None:
    files = [arg for name in VALUE_SETS[value_set] for arg in ("-f", str(CHART / name))]
    out = helm("lint", str(CHART), "--strict", *files)
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out
    assert "[ERROR]" not in out


@pytest.mark.parametrize("kubernetes", KUBERNETES)
@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_object_matches_the_kubernetes_schema(value_set: str, kubernetes: str) -> None:
    docs = render(value_set, kubernetes)
    for doc in docs:
        if doc["kind"] not in CUSTOM_RESOURCES:
            kubernetes_validate.validate(doc, kubernetes, strict=True)  # raises with the path of the first error


def test_the_schemas_catch_a_misspelt_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    deployment = one(rendered["cpu"], "Deployment")
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES[0], strict=True)


def test_each_value_set_renders_the_objects_it_turns_on(rendered: dict[str, list[dict[str, Any]]]) -> None:
    basic = ["Deployment", "PodDisruptionBudget", "Service", "Service"]
    assert sorted(d["kind"] for d in rendered["cpu"]) == basic
    assert sorted(d["kind"] for d in rendered["gpu"]) == basic
    every = sorted([*basic, "HorizontalPodAutoscaler", "InferencePool", "ServiceMonitor"])
    assert sorted(d["kind"] for d in rendered["all-features"]) == every


@pytest.mark.parametrize("value_set", ["cpu", "gpu"])
def test_probes_are_native_grpc_on_the_health_service_the_server_and_sdk_use(
    value_set: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    main = container(rendered[value_set])
    [grpc_port] = [p["containerPort"] for p in main["ports"] if p["name"] == "grpc"]
    assert HEALTH_SERVICE == SERVICE_NAME
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[probe]["grpc"] == {"port": grpc_port, "service": SERVICE_NAME}


@pytest.mark.parametrize("value_set", ["cpu", "gpu"])
def test_the_pod_outlives_its_drain_and_the_server_reads_every_variable(
    value_set: str, rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered[value_set]
    main, variables = container(docs), env(docs)
    assert unknown_settings_variables(n for n in variables if n.startswith("RILLET_")) == []
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    settings = Settings()  # as the server builds it from the container's environment
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    [_, pre_stop_s] = main["lifecycle"]["preStop"]["exec"]["command"]
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop_s) + settings.drain_grace_s
    assert settings.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert settings.port == ports["grpc"]
    assert settings.telemetry.prometheus_port == ports["metrics"]
    assert settings.telemetry.prometheus_host == "0.0.0.0"


def test_gpu_pods_ask_for_a_gpu_and_run_the_trtllm_engine(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["gpu"]
    main = container(docs)
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env(docs)["RILLET_TEXT_ENGINE"] == "trtllm"
    assert env(docs)["RILLET_TRTLLM__MODEL"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    [shm] = [v for v in pod["volumes"] if v["name"] == "shm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "shm", "mountPath": "/dev/shm"} in main["volumeMounts"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert "nvidia.com/gpu" not in container(rendered["cpu"])["resources"].get("limits", {})


def test_services_select_the_pods_and_one_is_headless(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["all-features"]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    regular, headless = one(docs, "Service", "rillet"), one(docs, "Service", "rillet-headless")
    for service in (regular, headless):
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert {"name": "grpc", "port": 50051, "targetPort": "grpc", "protocol": "TCP"} in service["spec"]["ports"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is False  # DNS lists only pods whose health says SERVING
    assert "clusterIP" not in regular["spec"]


def test_disruption_budget_and_autoscaler_target_the_deployment(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["all-features"]
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "rillet"}
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count
    [metric] = hpa["metrics"]
    # prometheus-adapter's rule (chart README) serves the server's gauge under this name.
    assert metric["pods"]["metric"]["name"] == "rillet_active_requests"
    assert semconv.RILLET_ACTIVE_REQUESTS.replace(".", "_") == "rillet_server_active_requests"
    readme = (CHART / "README.md").read_text()
    assert 'seriesQuery: "rillet_server_active_requests' in readme
    assert 'as: "rillet_active_requests"' in readme


def test_the_service_monitor_scrapes_the_metrics_port(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["all-features"]
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "15s"}
    selector = monitor["spec"]["selector"]["matchLabels"]
    scraped = [
        s
        for s in docs
        if s["kind"] == "Service"
        and selector.items() <= s["metadata"]["labels"].items()
        and any(p["name"] == "metrics" for p in s["spec"]["ports"])
    ]
    assert [s["metadata"]["name"] for s in scraped] == ["rillet"]


# -- The Gateway API Inference Extension's InferencePool ------------------------------------------------------------


def inference_pool_schema() -> dict[str, Any]:
    """The v1 InferencePool's openAPIV3Schema, from the vendored CRD (tests/deploy/crds/README.md)."""
    crd = yaml.safe_load((CRDS / "inference.networking.k8s.io_inferencepools.yaml").read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def fields_outside(doc: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields of `doc` its structural schema does not declare (the API server would prune them silently)."""
    if not isinstance(doc, dict) or "properties" not in schema:
        return []
    found = []
    for key, value in doc.items():
        if key not in schema["properties"]:
            found.append(f"{path}.{key}")
        else:
            found.extend(fields_outside(value, schema["properties"][key], f"{path}.{key}"))
    return found


def validate_inference_pool(pool: dict[str, Any]) -> None:
    schema = inference_pool_schema()
    jsonschema.validate(pool, schema)
    outside = [f for f in fields_outside(pool, schema) if not f.startswith(".metadata.")]  # ObjectMeta's own schema
    assert outside == [], f"fields the InferencePool CRD does not know: {outside}"


def test_the_inference_pool_matches_its_crd_and_selects_the_pods_it_labels(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["all-features"]
    pool = one(docs, "InferencePool")
    validate_inference_pool(pool)
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pool["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    [grpc_port] = [p["containerPort"] for p in container(docs)["ports"] if p["name"] == "grpc"]
    assert pool["spec"]["targetPorts"] == [{"number": grpc_port}]
    assert pool["spec"]["appProtocol"] == "kubernetes.io/h2c"  # gRPC: HTTP/2 in cleartext (TLS: the gateway's)
    assert pool["spec"]["endpointPickerRef"] == {
        "name": "rillet-epp",
        "port": {"number": 9002},
        "failureMode": "FailClose",
    }
    # The label the endpoint picker picks its engineConfigs entry by, and the port it scrapes.
    assert pod_labels["llm-d.ai/engine-type"] == "rillet"
    assert "metrics" in {p["name"] for p in container(docs)["ports"]}
    assert "llm-d.ai/engine-type" not in one(rendered["cpu"], "Deployment")["spec"]["template"]["metadata"]["labels"]


def test_the_crd_schema_catches_a_misspelt_or_missing_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    pool = one(rendered["all-features"], "InferencePool")
    misspelt = {**pool, "spec": {**pool["spec"], "targetPort": [{"number": 50051}]}}
    with pytest.raises(AssertionError, match=r"spec\.targetPort"):
        validate_inference_pool(misspelt)
    missing = {**pool, "spec": {k: v for k, v in pool["spec"].items() if k != "targetPorts"}}
    with pytest.raises(jsonschema.ValidationError):
        validate_inference_pool(missing)


def test_the_readme_maps_the_gauges_the_server_exports_for_the_endpoint_picker() -> None:
    readme = (CHART / "README.md").read_text()
    for metric in (
        semconv.RILLET_ENGINE_REQUESTS_WAITING,
        semconv.RILLET_ENGINE_REQUESTS_RUNNING,
        semconv.RILLET_ENGINE_KV_CACHE_UTILIZATION,
    ):
        assert f"{metric.replace('.', '_')}{{rillet_engine=" in readme  # Prometheus' name of the OTel gauge


def test_connections_age_so_clients_find_new_pods(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert env(rendered["cpu"])["RILLET_MAX_CONNECTION_AGE_S"] == "60"
    assert "RILLET_MAX_CONNECTION_AGE_GRACE_S" not in env(rendered["cpu"])  # sessions are never cut
    assert env(rendered["all-features"])["RILLET_MAX_CONNECTION_AGE_GRACE_S"] == "600"


# -- TLS: the probe command the chart renders, run against a real server with the files the chart mounts ----------


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:  # a pod's certificate as cert-manager issues it: server and client usage, service names
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        names = [x509.DNSName("rillet.inference.svc"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


@pytest.fixture
def tls_secret(tmp_path: Path) -> Path:
    """A directory holding what the chart's TLS Secret holds: tls.crt, tls.key and ca.crt."""
    ca_key, pod_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("cluster CA", ca_key, None)
    pod = _certificate("rillet", pod_key, (ca, ca_key))
    (tmp_path / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "tls.crt").write_bytes(pod.public_bytes(serialization.Encoding.PEM))
    pkcs8 = serialization.PrivateFormat.PKCS8
    key = pod_key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())
    (tmp_path / "tls.key").write_bytes(key)
    return tmp_path


async def run_probe(command: list[str], secret: Path, port: int) -> int:
    assert command[:2] == ["rillet", "health"]
    args = [a.replace("/etc/rillet/tls", str(secret)).replace("127.0.0.1:50051", f"127.0.0.1:{port}") for a in command]
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "rillet.server.cli", *args[1:])
    return await asyncio.wait_for(process.wait(), timeout=60)


async def test_under_mutual_tls_the_probes_run_rillet_health_with_the_mounted_secret(
    rendered: dict[str, list[dict[str, Any]]], tls_secret: Path, make_server: ServerFactory
) -> None:
    docs = rendered["all-features"]
    main = container(docs)
    [volume] = [v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == "rillet-tls"
    assert {"name": "tls", "mountPath": "/etc/rillet/tls", "readOnly": True} in main["volumeMounts"]
    variables = env(docs)
    tls = {
        "cert_file": variables["RILLET_SECURITY__TLS__CERT_FILE"].replace("/etc/rillet/tls", str(tls_secret)),
        "key_file": variables["RILLET_SECURITY__TLS__KEY_FILE"].replace("/etc/rillet/tls", str(tls_secret)),
        "client_ca_file": variables["RILLET_SECURITY__TLS__CLIENT_CA_FILE"].replace("/etc/rillet/tls", str(tls_secret)),
    }
    server = await make_server(security={"tls": tls})
    command = main["readinessProbe"]["exec"]["command"]
    assert main["startupProbe"]["exec"]["command"] == main["livenessProbe"]["exec"]["command"] == command
    assert await run_probe(command, tls_secret, server.port) == 0
    # It checks what it says: without the client certificate, or expecting another name, it fails.
    without_cert = command[: command.index("--tls-cert")]
    assert await run_probe(without_cert, tls_secret, server.port) == 1
    other_name = [("other.inference.svc" if a == "rillet.inference.svc" else a) for a in command]
    assert await run_probe(other_name, tls_secret, server.port) == 1
    await server.stop(grace_s=0)
    assert await run_probe(command, tls_secret, server.port) == 1  # nothing serves there any more
