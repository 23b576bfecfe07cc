"""MLflow's users kept in step with the API's owners, on a real ``mlflow server`` running
MLflow's ``basic-auth`` app (the local stack's ``MlflowServer`` with ``MlflowAuth``).

- each owner is a user whose password is their token, an admin owner an MLflow admin;
- a token changed at a restart: the old one is refused, the new one let in;
- an owner whose token is gone is locked out (their password replaced by a random one);
- an owner's experiment is readable by them alone (READ: no writes), the service's own
  account (the server's admin) writes."""

from __future__ import annotations

import os

import httpx
import pytest

from service.local.stack import MlflowAuth, MlflowServer
from service.records import mlflow_access
from service.records.tracking import use_account

SERVICE = ("credit-service", "service-password-0123")
ALICE, ALICE_NEW, BOB, ROOT = ("alice-token-000001", "alice-token-000002",
                               "bob-token-00000001", "root-token-0000001")


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-auth")
    config = root / "auth.ini"
    config.write_text(mlflow_access.auth_file("NO_PERMISSIONS",
                                              f"sqlite:///{root / 'users.db'}", SERVICE[0]))
    server = MlflowServer(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts",
                          log_file=root / "mlflow.log",
                          auth=MlflowAuth(config, SERVICE[1], "secret-key-0123")).start()
    before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME",
                                             "MLFLOW_TRACKING_PASSWORD")}
    use_account(*SERVICE)
    yield server.url
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


def _status(url: str, auth, experiment_id: str) -> int:
    return httpx.get(f"{url}/api/2.0/mlflow/experiments/get", auth=auth, timeout=30,
                     params={"experiment_id": experiment_id}).status_code


def test_owners_are_users_kept_in_step_with_their_tokens(auth_server):
    url = auth_server
    mlflow_access.sync_users(url, {"alice": (ALICE, False), "bob": (BOB, False),
                                   "root": (ROOT, True)})
    alices = mlflow_access.open_owner_experiment(url, "credit-search", "alice")
    assert _status(url, None, alices) == 401
    assert _status(url, ("alice", ALICE), alices) == 200
    assert _status(url, ("bob", BOB), alices) == 403
    assert _status(url, ("root", ROOT), alices) == 200  # an admin
    # READ: alice cannot write into her experiment; the service's account can
    run = httpx.post(f"{url}/api/2.0/mlflow/runs/create", auth=("alice", ALICE), timeout=30,
                     json={"experiment_id": alices})
    assert run.status_code == 403
    run = httpx.post(f"{url}/api/2.0/mlflow/runs/create", auth=SERVICE, timeout=30,
                     json={"experiment_id": alices})
    assert run.status_code == 200

    # a restart with alice's token changed, bob's removed (he still owns studies)
    mlflow_access.sync_users(url, {"alice": (ALICE_NEW, False), "root": (ROOT, True)},
                             former={"alice", "bob"})
    assert _status(url, ("alice", ALICE), alices) == 401
    assert _status(url, ("alice", ALICE_NEW), alices) == 200
    assert _status(url, ("bob", BOB), alices) == 401  # locked out
    # the same again changes nothing (every start does it); the grant is idempotent
    mlflow_access.sync_users(url, {"alice": (ALICE_NEW, False), "root": (ROOT, True)},
                             former={"alice", "bob"})
    assert mlflow_access.open_owner_experiment(url, "credit-search", "alice") == alices
    assert _status(url, ("alice", ALICE_NEW), alices) == 200
