"""The Kubernetes manifests checked against their schemas, and against compose.yaml.

- Every built-in object (Deployment, StatefulSet, Service, ConfigMap, Secret) validates
  strictly (an unknown field is an error) against the Kubernetes OpenAPI schemas that
  ``kubernetes-validate`` ships (its newest Kubernetes version).
- The RayCluster validates against KubeRay's own CRD schema (v1, KubeRay v1.7.0, kept in
  ``schemas/``: no PyPI package ships it), an unknown field an error there too.
- The compose stack and the manifests agree, part by part, on the image, the
  environment (the same names; the same value wherever both files spell one out; one
  compose variable per Secret key), the in-cluster addresses and the ports, and the
  probes (the API's readiness ``/readyz``, liveness ``/livez``).

Needs the dev extra's ``kubernetes-validate`` (skipped without it); no cluster, no
container: part of the default run.
"""

from __future__ import annotations

import copy
import gzip
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CRD_SCHEMA = Path(__file__).resolve().parent / "schemas" / "ray.io_rayclusters.v1.json.gz"

# compose service -> where the manifests run the same part: (kind, name, container)
PARTS = {
    "api": ("Deployment", "credit-search-api", "api"),
    "mlflow": ("Deployment", "mlflow", "mlflow"),
    "postgres": ("StatefulSet", "postgres", "postgres"),
    "s3": ("StatefulSet", "s3", "seaweedfs"),
    "ray-head": ("RayCluster", "head", "ray-head"),
    "ray-worker-1": ("RayCluster", "cpu", "ray-worker"),
    "ray-worker-2": ("RayCluster", "cpu", "ray-worker"),
}
# Variables only a manifest sets, and why.
MANIFEST_ONLY = {
    ("postgres", "PGDATA"): "a volume claim's root holds lost+found: the data one folder down",
    ("mlflow", "MLFLOW_BACKEND"): "the backend URL from the Secret, for the container's command",
}


def manifests() -> list[dict]:
    return [d for p in sorted((DEPLOY / "kubernetes").glob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text()) if d]


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]


def raycluster() -> dict:
    return next(d for d in manifests() if d["kind"] == "RayCluster")


def k8s_container(kind: str, name: str, container: str) -> dict:
    if kind == "RayCluster":
        spec = raycluster()["spec"]
        groups = {"head": spec["headGroupSpec"],
                  **{g["groupName"]: g for g in spec["workerGroupSpecs"]}}
        pod = groups[name]["template"]["spec"]
    else:
        pod = next(d for d in manifests() if d["kind"] == kind
                   and d["metadata"]["name"] == name)["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == container)


def k8s_services() -> dict[str, set[int]]:
    """Service name -> its ports, KubeRay's head service (<cluster>-head-svc) included."""
    ports = {d["metadata"]["name"]: {p["port"] for p in d["spec"]["ports"]}
             for d in manifests() if d["kind"] == "Service"}
    head = k8s_container("RayCluster", "head", "ray-head")
    ports[f"{raycluster()['metadata']['name']}-head-svc"] = \
        {p["containerPort"] for p in head["ports"]}
    return ports


def compose_hosts() -> dict[str, str]:
    """A compose service's host name -> the Service name the manifests reach it by."""
    return {"ray-head": f"{raycluster()['metadata']['name']}-head-svc"}


SECRET = object()  # a value read from the Secret / a required compose variable


def compose_value(value) -> object:
    """A compose environment value: SECRET for a required variable (``${X:?...}``), a
    ``${X:-default}`` read as its default, host names as the manifests' Service names."""
    text = str(value)
    if re.search(r"\$\{\w+:\?", text):
        return SECRET
    text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)
    for host, service in compose_hosts().items():
        text = re.sub(rf"(?<=//){re.escape(host)}(?=:)", service, text)
    return text


def k8s_env(container: dict) -> dict[str, object]:
    return {e["name"]: SECRET if "valueFrom" in e else e["value"]
            for e in container.get("env", [])}


def strict(schema: dict) -> dict:
    """The schema with unknown fields refused wherever it lists the fields (as
    ``kubectl``'s strict field validation does; a structural schema would prune them)."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def raycluster_errors(resource: dict) -> list[str]:
    jsonschema = pytest.importorskip("jsonschema")
    schema = strict(json.loads(gzip.decompress(CRD_SCHEMA.read_bytes())))
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(resource)]


# ----------------------------------------------------------------------------- schemas
def test_every_builtin_object_validates_strictly_against_the_kubernetes_schemas():
    kv = pytest.importorskip("kubernetes_validate", reason="needs the dev extra's "
                             "kubernetes-validate")
    version = kv.latest_version()
    builtin = [d for d in manifests() if d["kind"] != "RayCluster"]
    assert {d["kind"] for d in builtin} == {"Deployment", "StatefulSet", "Service",
                                            "ConfigMap", "Secret"}
    for doc in builtin:
        kv.validate(doc, version, strict=True)  # raises ValidationError naming the field
    # the check bites: a misspelt field is refused
    broken = copy.deepcopy(next(d for d in builtin if d["kind"] == "Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, version, strict=True)


def test_the_raycluster_validates_against_kuberays_crd_schema():
    assert raycluster_errors(raycluster()) == []
    broken = copy.deepcopy(raycluster())
    broken["spec"]["workerGroupSpecs"][0]["replica"] = 2  # misspelt: replicas
    broken["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 1  # strings only
    errors = raycluster_errors(broken)
    assert any("replica" in e for e in errors), errors
    assert any("rayStartParams" in e for e in errors), errors


# ------------------------------------------------------------- compose <-> manifests
@pytest.mark.parametrize("service", sorted(PARTS))
def test_compose_and_the_manifests_run_the_same_image(service):
    assert compose()[service]["image"] == k8s_container(*PARTS[service])["image"]


@pytest.mark.parametrize("service", sorted(PARTS))
def test_compose_and_the_manifests_give_each_part_the_same_environment(service):
    ours = {k: compose_value(v) for k, v in (compose()[service].get("environment")
                                             or {}).items()}
    theirs = k8s_env(k8s_container(*PARTS[service]))
    only_theirs = {k for k in set(theirs) - set(ours) if (service, k) not in MANIFEST_ONLY}
    assert (sorted(set(ours) - set(theirs)), sorted(only_theirs)) == ([], [])
    differ = {k: (ours[k], theirs[k]) for k in set(ours) & set(theirs)
              if SECRET not in (ours[k], theirs[k]) and ours[k] != theirs[k]}
    assert differ == {}


def test_each_compose_variable_is_one_secret_key_of_the_manifests():
    pairs = set()
    for service, part in PARTS.items():
        env = compose()[service].get("environment") or {}
        for item in k8s_container(*part).get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            variable = re.search(r"\$\{(\w+):\?", str(env.get(item["name"], "")))
            if ref and variable:
                pairs.add((variable[1], ref["key"]))
    variables = [v for v, _ in pairs]
    keys = [k for _, k in pairs]
    assert len(set(variables)) == len(variables) and len(set(keys)) == len(keys), pairs
    assert {"RAY_AUTH_TOKEN", "CREDIT_MLFLOW_PASSWORD", "CREDIT_API_TOKENS",
            "MLFLOW_SECRET_KEY"} <= set(variables)


def addresses(node, hosts: dict[str, str] | None = None) -> set[tuple[str, int]]:
    """Every ``scheme://[user@]host:port`` in the strings of ``node``."""
    found: set[tuple[str, int]] = set()
    if isinstance(node, dict):
        for value in node.values():
            found |= addresses(value, hosts)
    elif isinstance(node, list):
        for value in node:
            found |= addresses(value, hosts)
    elif isinstance(node, str):
        text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", node)
        for host, port in re.findall(r"://(?:[^@/\s\"]+@)?([a-z0-9.-]+):(\d+)", text):
            found.add(((hosts or {}).get(host, host), int(port)))
    return found


def test_the_parts_reach_each_other_at_the_same_addresses_the_services_publish():
    # the probes ask the container itself (127.0.0.1): they are compared below
    ours = addresses({k: {f: v for f, v in s.items() if f != "healthcheck"}
                      for k, s in compose().items()}, compose_hosts())
    theirs = addresses(manifests())
    assert ours == theirs
    services = k8s_services()
    inside = {(h, p) for h, p in theirs if h != "localhost"}
    assert inside and all(p in services.get(h, set()) for h, p in inside), \
        (inside, services)


@pytest.mark.parametrize("service", sorted(PARTS))
def test_what_compose_publishes_the_manifests_open(service):
    published = {int(compose_value(p).split(":")[-1])
                 for p in compose()[service].get("ports", [])}
    opened = {p["containerPort"] for p in k8s_container(*PARTS[service]).get("ports", [])}
    assert published <= opened


def compose_probe(service: str) -> tuple | None:
    check = compose()[service].get("healthcheck")
    if check is None:
        return None
    argv = check["test"][1:]
    url = re.search(r"http://[\d.]+:(\d+)(/\w+)", " ".join(argv))
    return ("http", url[2], int(url[1])) if url else ("exec", *argv)


def k8s_probe(probe: dict | None) -> tuple | None:
    if probe is None:
        return None
    if "httpGet" in probe:
        return ("http", probe["httpGet"]["path"], probe["httpGet"]["port"])
    return ("exec", *probe["exec"]["command"])


@pytest.mark.parametrize("service", sorted(PARTS))
def test_compose_checks_readiness_as_the_manifests_do(service):
    container = k8s_container(*PARTS[service])
    assert compose_probe(service) == k8s_probe(container.get("readinessProbe"))


def test_the_api_probes_are_readyz_and_livez():
    api = k8s_container(*PARTS["api"])
    assert k8s_probe(api["readinessProbe"]) == ("http", "/readyz", 8000)
    assert k8s_probe(api["livenessProbe"]) == ("http", "/livez", 8000)
    assert compose_probe("api") == ("http", "/readyz", 8000)
