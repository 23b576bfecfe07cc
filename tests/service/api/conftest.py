"""Real servers for the API tests: ``mlflow server`` on loopback, and the API itself
(``credit serve`` in a subprocess, uvicorn on a free loopback port) against the
session's Ray cluster (``ray_cluster``, with its dashboard and token auth).

Two API servers share the cluster and the MLflow server:
- ``api``: the studies that run to their end (small ones), 4 at once at most;
- ``queue_api``: 20 studies at once, a small body limit; its studies are cancelled
  soon after they are submitted (the tests of many submissions and of bad input).
"""

from __future__ import annotations

import os

import pytest

from service.local.stack import MlflowServer
from tests.service.api.helpers import free_port, start_api


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    server = MlflowServer(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts",
                          port=free_port(), log_file=root / "mlflow.log").start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def api(ray_dashboard, mlflow_server, tmp_path_factory):
    """The API whose studies run, on the shared cluster and MLflow server."""
    server = start_api(tmp_path_factory, "api-home", ray_dashboard, mlflow_server,
                       max_concurrent_studies="4", max_trials_per_study="50")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def queue_api(ray_dashboard, mlflow_server, tmp_path_factory):
    """An API for many studies at once (cancelled soon after submission)."""
    server = start_api(tmp_path_factory, "queue-api-home", ray_dashboard, mlflow_server,
                       max_concurrent_studies="20", max_trials_per_study="50",
                       max_body_bytes="8192")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_jobs(ray_dashboard):
    """A Jobs API client of the test cluster (to check what the service started)."""
    from service.jobs import RayJobs

    return RayJobs(ray_dashboard, token=os.environ["RAY_AUTH_TOKEN"])
