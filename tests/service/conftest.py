"""Real infrastructure for the service tests: a two-node Ray cluster on this machine
(``ray start --head`` + ``ray start --address``, private temp dir), MLflow and
Optuna stores in a temporary CREDIT_HOME."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.local.stack import free_port
from tests.service.processes import stop_cluster

VENV_BIN = Path(sys.executable).parent
NODE_IP = "127.0.0.2"  # loopback, and not rewritten by Ray (see ray_cluster)


def _ray(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "ray"), *args], env=env, capture_output=True,
                          text=True, timeout=180)


@pytest.fixture(scope="session")
def credit_home(tmp_path_factory):
    """A temporary CREDIT_HOME for the session (the environment is restored after)."""
    home = tmp_path_factory.mktemp("credit-home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CREDIT_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def ray_cluster(credit_home):
    """A head node (2 CPUs, with the dashboard and its Jobs API) and a worker node
    (1 CPU) joined over loopback. The variables it sets are unset again after."""
    with pytest.MonkeyPatch.context() as patch:
        yield from _ray_cluster(patch)


def _ray_cluster(patch: pytest.MonkeyPatch):
    temp = Path(f"/tmp/credit-test-ray-{os.getpid()}")
    # Token authentication, as Ray >= 2.59 enables it: every node and driver of this
    # cluster (subprocesses included) shares one token through the environment.
    patch.setenv("RAY_AUTH_MODE", "token")
    # Keep every node, driver and worker on loopback: nodes register 127.0.0.2, and
    # drivers join at 127.0.0.2 too, because Ray rewrites "127.0.0.1" (and "localhost")
    # into the machine's outward IP, in --node-ip-address as in an address.
    patch.setenv("CREDIT_RAY_NODE_IP", NODE_IP)
    patch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    # the nodes' warm drivers (service.runner.warm) keep their sockets and logs here
    patch.setenv("CREDIT_WARM_DIR", str(temp / "warm"))
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    port, dashboard_port = free_port(), free_port()
    # Every port a node opens is chosen here: a second cluster on this machine (another
    # user's, or another test session's) must never collide with this one.
    head = _ray("start", "--head", f"--port={port}", f"--node-ip-address={NODE_IP}",
                "--num-cpus=2", "--num-gpus=0", f"--temp-dir={temp}",
                "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard_port}", *_node_ports(head=True),
                "--resources={\"head_node\": 1}", "--disable-usage-stats", env=env)
    if head.returncode != 0:
        stop_cluster(temp)
        pytest.fail(f"ray start --head failed: {head.stderr[-2000:]}")
    address = f"{NODE_IP}:{port}"
    worker = _ray("start", f"--address={address}", f"--node-ip-address={NODE_IP}",
                  "--num-cpus=1", "--num-gpus=0", *_node_ports(head=False),
                  "--resources={\"worker_node\": 1}", "--disable-usage-stats", env=env)
    if worker.returncode != 0:
        stop_cluster(temp)
        pytest.fail(f"ray start (worker) failed: {worker.stderr[-2000:]}")
    patch.setenv("RAY_ADDRESS", address)
    patch.setenv("CREDIT_TEST_RAY_DASHBOARD_URL", f"http://127.0.0.1:{dashboard_port}")
    deadline = time.time() + 60
    import ray

    try:  # the cluster stops whatever happens here (a failed ray.init left it running)
        ray.init(address=address, log_to_driver=False, _node_ip_address=NODE_IP)
        while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.time() < deadline:
            time.sleep(0.5)
        yield address
    finally:
        ray.shutdown()
        stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_dashboard(ray_cluster) -> str:
    """The URL of the test cluster's dashboard (Jobs API, state API), on loopback."""
    return os.environ["CREDIT_TEST_RAY_DASHBOARD_URL"]


def _node_ports(head: bool) -> list[str]:
    ports = [f"--dashboard-agent-listen-port={free_port()}",
             f"--metrics-export-port={free_port()}"]
    if head:
        ports.append(f"--ray-client-server-port={free_port()}")
    return ports
