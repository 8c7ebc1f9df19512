"""deploy/Dockerfile and deploy/kubernetes/: the image is linted (hadolint) and the
manifests validated against Kubernetes' schemas (kubernetes-validate, strict), as
base images cannot be pulled nor a cluster run here; and both are checked against
the code: every flag a container passes is one its service accepts, every config
key and NOTIFYMESH_ variable a field, every port the one the service listens on,
every selector one that selects a pod."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from deploy import healthcheck
from notifymesh.server.config import FIELDS

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes" / "base"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
KUBERNETES_VERSION = "1.30.0"  # the oldest minor version still supported upstream at the time of writing
SERVICES = ("frontend", "metadata", "storage", "sender")


def resources() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(BASE.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def workloads() -> list[dict]:
    return [doc for _, doc in resources() if doc["kind"] in ("Deployment", "StatefulSet")]


def notifymesh_containers() -> list[dict]:
    return [c for w in workloads() for c in w["spec"]["template"]["spec"]["containers"] if c["image"] == "notifymesh"]


def configured() -> dict:
    [config_map] = [doc for _, doc in resources() if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] ==
                    "notifymesh-config"]
    return json.loads(config_map["data"]["config.json"])


def test_the_kustomization_lists_every_manifest_and_sets_the_image():
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in BASE.glob("*.yaml")
                                                        if p.name != "kustomization.yaml")
    assert [i["name"] for i in kustomization["images"]] == ["notifymesh"]


def test_every_resource_is_valid_against_the_kubernetes_schema():
    for name, doc in resources():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # raises, naming the field


def test_the_schema_check_refuses_a_broken_resource():
    """The check above has teeth: a wrong type and an unknown field are refused."""
    [storage] = [w for w in workloads() if w["metadata"]["name"] == "storage"]
    broken = json.loads(json.dumps(storage))
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    unknown = json.loads(json.dumps(storage))
    unknown["spec"]["template"]["spec"]["containers"][0]["argz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, KUBERNETES_VERSION, strict=True)


def test_the_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_holds_every_package_and_runs_as_a_non_root_user():
    text = DOCKERFILE.read_text()
    packages = {p.rstrip("*") for p in
                re.search(r'include = \[(.*?)\]', (ROOT / "pyproject.toml").read_text()).group(1).replace('"', "")
                .replace(" ", "").split(",")}
    copied = set(re.findall(r"^COPY (\w+)/ \1/$", text, re.M))
    assert copied == packages
    assert re.search(r"^USER 10001$", text, re.M)
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.*)$", text, re.M) for p in line.split()}
    assert exposed == {port for c in notifymesh_containers() for port in (p["containerPort"] for p in c["ports"])}
    for w in workloads():
        if any(c["image"] == "notifymesh" for c in w["spec"]["template"]["spec"]["containers"]):
            assert w["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001


def service_flags(service: str) -> set[str]:
    """The long options `python -m <service>` accepts, from its own parser."""
    out = subprocess.run([sys.executable, "-m", service, "--help"], capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", out))


def test_every_flag_a_container_passes_is_one_its_service_accepts():
    flags = {service: service_flags(service) for service in SERVICES}
    seen = set()
    for container in notifymesh_containers():
        service, *args = container["args"]
        assert service in SERVICES, service
        seen.add(service)
        for arg in args:
            assert arg.startswith("--"), arg
            assert arg.split("=", 1)[0] in flags[service], (service, arg)
        for required in ("--node-id", "--etcd", "--listen", "--advertise"):
            assert any(a.startswith(required + "=") for a in args), (service, required)
        for variable in re.findall(r"\$\((\w+)\)", " ".join(args)):  # each $(VAR) is set
            assert variable in {e["name"] for e in container["env"]}, (service, variable)
        probe = container["readinessProbe"]["exec"]["command"]
        assert probe[:3] == ["python", "-m", "deploy.healthcheck"]
        # Mutual TLS, as every port of the mesh requires: the probe presents the
        # workload's own certificate, from the Secret mounted at --tls-dir.
        assert "--plaintext" not in args
        tls_dir = next(a for a in args if a.startswith("--tls-dir=")).split("=", 1)[1]
        tls_name = next(a for a in args if a.startswith("--tls-name=")).split("=", 1)[1]
        assert probe[4:] == ["--tls-dir", tls_dir, "--tls-name", tls_name]
        assert tls_dir in {m["mountPath"] for m in container["volumeMounts"]}
    assert seen == set(SERVICES)


def test_every_config_key_and_variable_is_a_config_field():
    assert set(configured()) <= set(FIELDS)
    for container in notifymesh_containers():
        for env in container.get("env", []):
            if env["name"].startswith("NOTIFYMESH_"):
                assert env["name"][len("NOTIFYMESH_"):].lower() in FIELDS, env["name"]


def test_ports_are_the_ones_the_services_listen_on():
    offset = configured().get("frontend_http_port_offset", FIELDS["frontend_http_port_offset"].default)
    for container in notifymesh_containers():
        service, *args = container["args"]
        listen = int(next(a for a in args if a.startswith("--listen=")).rsplit(":", 1)[1])
        advertise = int(next(a for a in args if a.startswith("--advertise=")).rsplit(":", 1)[1])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["grpc"] == listen == advertise
        assert container["readinessProbe"]["exec"]["command"][3] == f"127.0.0.1:{listen}"
        metrics = int(next(a for a in args if a.startswith("--metrics-listen=")).rsplit(":", 1)[1])
        assert ports["metrics"] == metrics
        if service == "frontend":
            assert ports["http"] == listen + offset
        else:
            assert set(ports) == {"grpc", "metrics"}


def test_services_and_budgets_select_pods_that_exist_and_name_their_ports():
    pods = [(w["spec"]["template"]["metadata"]["labels"], w["spec"]["template"]["spec"]["containers"])
            for w in workloads()]

    def selected(selector: dict):
        return [(labels, containers) for labels, containers in pods
                if all(labels.get(k) == v for k, v in selector.items())]

    for name, doc in resources():
        if doc["kind"] == "Service":
            [(_, containers)] = selected(doc["spec"]["selector"])
            names = {p["name"] for c in containers for p in c["ports"]}
            for port in doc["spec"]["ports"]:
                assert port.get("targetPort", port["name"]) in names | {port["port"]}, (name, port)
        elif doc["kind"] == "PodDisruptionBudget":
            assert len(selected(doc["spec"]["selector"]["matchLabels"])) == 1, name
    for w in workloads():
        assert w["spec"]["selector"]["matchLabels"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
        if w["kind"] == "StatefulSet":
            assert any(doc["kind"] == "Service" and doc["metadata"]["name"] == w["spec"]["serviceName"]
                       for _, doc in resources())


async def test_the_probe_says_serving_only_for_a_serving_service():
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        addr = f"127.0.0.1:{port}"
        await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert await _probe(addr) == 1
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert await _probe(addr) == 0
    finally:
        await server.stop(None)
    assert await _probe(addr) == 1  # nobody listening


async def _probe(addr: str) -> int:
    import asyncio
    return await asyncio.to_thread(healthcheck.main, [addr, "--timeout", "1"])


def test_every_file_a_container_is_given_comes_from_a_secret_the_operations_guide_creates():
    """--master-key-file, --admin-key-file: the file is in a mounted Secret, made by the
    `kubectl create secret generic NAME --from-file=FILE` docs/operations.md gives."""
    guide = (ROOT / "docs" / "operations.md").read_text()
    created = dict(re.findall(r"kubectl create secret generic (\S+) --from-file=(\S+)", guide))
    given = set()
    for workload in workloads():
        spec = workload["spec"]["template"]["spec"]
        secrets = {v["name"]: v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        for container in spec["containers"]:
            if container["image"] != "notifymesh":
                continue
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            for arg in container["args"][1:]:
                flag, _, path = arg.partition("=")
                if not flag.endswith("-file"):
                    continue
                directory, _, name = path.rpartition("/")
                secret = secrets.get(mounts.get(directory, ""))
                assert secret is not None, (workload["metadata"]["name"], arg, "not in a mounted Secret")
                assert created.get(secret) == name, (secret, name, "docs/operations.md does not make it")
                given.add((flag, workload["metadata"]["name"]))
    assert ("--admin-key-file", "metadata") in given, "the metadata service registers the bootstrap admin key"
    assert {w for f, w in given if f == "--master-key-file"} == {w["metadata"]["name"] for w in workloads()
                                                                 if w["metadata"]["name"] != "etcd"}


def test_the_admin_key_tool_makes_a_private_key_once(tmp_path):
    from deploy import admin_key
    from notifymesh.server import principal
    path = tmp_path / "admin.key"
    assert admin_key.create(path) and (path.stat().st_mode & 0o777) == 0o600
    key = path.read_text().strip()
    principal.parse_key(key)
    assert not admin_key.create(path) and path.read_text().strip() == key, "kept"
