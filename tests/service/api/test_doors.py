"""Every door of ``credit serve --local`` with named owners asks who is there.

The real stack (a private Ray head, ``mlflow server`` with MLflow's ``basic-auth`` app,
the Optuna dashboard behind its gate, the API) with two owners and an admin; alice runs a
study; then each door is tried with no credentials, as alice, as bob and as the admin:
the API, MLflow's REST API and UI, the Optuna dashboard, the Ray dashboard. Alice's study
link lands on her study's runs in Chromium once she has signed in."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from service.local.stack import free_port
from tests.service.api.browser import Browser
from tests.service.api.helpers import TINY, wait_status

ALICE, BOB, ROOT = "alice-token-doors-01", "bob-token-doors-0002", "root-token-doors-003"
WHO = {"nobody": None, "alice": ("alice", ALICE), "bob": ("bob", BOB),
       "root": ("root", ROOT)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("doors-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CREDIT_", "RAY_"))}
    env.update(CREDIT_HOME=str(home), CREDIT_SYNC_INTERVAL_S="1",
               CREDIT_API_TOKENS=f"alice:{ALICE},bob:{BOB},root:{ROOT}:admin")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--local", "--port", str(port),
         "--cpus", "2", "--mlflow-port", str(free_port()), "--optuna-port", str(free_port()),
         "--dashboard-port", str(free_port())],
        env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert proc.poll() is None, proc.stderr.read()
        record = json.loads((home / "server.json").read_text())
        yield {"url": url, "home": home, "record": record, "proc": proc}
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        for secret in (ALICE, BOB, ROOT):
            assert secret not in err


@pytest.fixture(scope="module")
def study(stack):
    headers = {"Authorization": f"Bearer {ALICE}"}
    with httpx.Client(base_url=stack["url"], headers=headers, timeout=60) as alice:
        r = alice.post("/studies", json={"name": "alices", "space": "mnist-fc-backprop",
                                         "max_trials": 2, "parallel_trials": 2, **TINY})
        assert r.status_code == 201, r.text
        final = wait_status(alice, "alices", ("SUCCEEDED", "FAILED"))
    assert final["status"] == "SUCCEEDED", final["message"]
    return final


def _get(url: str, who: str, **kwargs) -> int:
    auth = WHO[who]
    return httpx.get(url, auth=auth, timeout=30, **kwargs).status_code


@pytest.mark.slow
def test_every_door_asks_who_is_there(stack, study):
    api, mlflow_url = stack["url"], stack["record"]["mlflow_ui"]
    dashboard, ray = stack["record"]["optuna_dashboard"], stack["record"]["ray_dashboard"]
    runs = httpx.get(f"{mlflow_url}/api/2.0/mlflow/runs/search", timeout=30)
    assert runs.status_code == 401 and runs.headers["www-authenticate"].startswith("Basic")
    search = {"experiment_ids": [study["mlflow_experiment_id"]], "max_results": 50}
    table: dict[str, dict[str, int]] = {}
    for who in WHO:
        auth = WHO[who]
        bearer = {"Authorization": f"Bearer {auth[1]}"} if auth else {}
        mlflow_runs = httpx.post(f"{mlflow_url}/api/2.0/mlflow/runs/search", json=search,
                                 auth=auth, timeout=30)
        table[who] = {
            "API study": httpx.get(f"{api}/studies/{study['id']}", headers=bearer,
                                   timeout=30).status_code,
            "MLflow REST runs": mlflow_runs.status_code,
            "MLflow REST get run": _get(f"{mlflow_url}/api/2.0/mlflow/runs/get", who,
                                        params={"run_id": study["mlflow_parent_run_id"]}),
            "MLflow REST delete": httpx.post(
                f"{mlflow_url}/api/2.0/mlflow/runs/delete", auth=auth, timeout=30,
                json={"run_id": study["mlflow_parent_run_id"]}).status_code
            if who != "root" else None,  # the admin may: not tried
            "MLflow UI": _get(f"{mlflow_url}/", who),
            "Optuna dashboard": _get(f"{dashboard}/api/studies", who),
            "Ray dashboard": httpx.get(f"{ray}/api/jobs/", headers=bearer,
                                       timeout=30).status_code,
        }
        if mlflow_runs.status_code == 200:
            names = {r["info"]["run_name"] for r in mlflow_runs.json().get("runs", [])}
            table[who]["MLflow REST runs"] = len(names)  # runs seen (a search answers 200)
    print(json.dumps(table, indent=1))
    for who in ("nobody", "alice", "bob"):  # the Ray dashboard takes only the Ray token
        assert table[who].pop("Ray dashboard") in (401, 403), who
    assert table["root"].pop("Ray dashboard") in (401, 403)
    assert table["nobody"] == {"API study": 401, "MLflow REST runs": 401,
                               "MLflow REST get run": 401, "MLflow REST delete": 401,
                               "MLflow UI": 401, "Optuna dashboard": 401}
    # alice reads her runs (parent and two trials) and cannot delete them; bob sees
    # nothing of hers
    assert table["alice"] == {"API study": 200, "MLflow REST runs": 3,
                              "MLflow REST get run": 200, "MLflow REST delete": 403,
                              "MLflow UI": 200, "Optuna dashboard": 403}
    assert table["bob"]["API study"] == 404 and table["bob"]["MLflow REST runs"] in (0, 403)
    assert {k: v for k, v in table["bob"].items() if k not in ("API study",
                                                               "MLflow REST runs")} == {
        "MLflow REST get run": 403, "MLflow REST delete": 403, "MLflow UI": 200,
        "Optuna dashboard": 403}
    assert table["root"] == {"API study": 200, "MLflow REST runs": 3,
                             "MLflow REST get run": 200, "MLflow REST delete": None,
                             "MLflow UI": 200, "Optuna dashboard": 200}
    # the run nobody but an admin could delete is still there and alice's
    parent = httpx.get(f"{mlflow_url}/api/2.0/mlflow/runs/get", auth=WHO["alice"],
                       params={"run_id": study["mlflow_parent_run_id"]}, timeout=30)
    assert parent.status_code == 200 and parent.json()["run"]["info"]["lifecycle_stage"] \
        == "active"
    # the study's links: alice's MLflow link is her own experiment; the dashboard is the
    # admin's only
    assert study["links"]["optuna"] is None
    as_root = httpx.get(f"{api}/studies/{study['id']}", timeout=30,
                        headers={"Authorization": f"Bearer {ROOT}"}).json()
    assert as_root["links"]["optuna"].startswith(dashboard + "/dashboard/studies/")
    experiment = httpx.get(f"{mlflow_url}/api/2.0/mlflow/experiments/get", auth=WHO["alice"],
                           params={"experiment_id": study["mlflow_experiment_id"]}, timeout=30)
    assert experiment.json()["experiment"]["name"] == "credit-search/alice"
    # bob's own experiment list does not show alice's
    bobs = httpx.post(f"{mlflow_url}/api/2.0/mlflow/experiments/search", auth=WHO["bob"],
                      json={"max_results": 100}, timeout=30).json()
    assert "credit-search/alice" not in {e["name"] for e in bobs.get("experiments", [])}


@pytest.mark.slow
def test_alices_link_lands_on_her_runs_after_sign_in(stack, study):
    link = study["links"]["mlflow"]
    assert link and "viewStateShareKey=" in link
    with Browser() as browser:
        browser.sign_in("alice", ALICE)
        browser.open(link, settle_s=1)
        text = browser.wait_for("document.body && document.body.innerText.includes("
                                "'alices/trial-') && document.body.innerText", timeout_s=60)
    names = set(re.findall(r"alices/trial-\w+", text))
    assert len(names) == 2, text[:2000]
    assert "Training runs" in text or "Runs" in text
