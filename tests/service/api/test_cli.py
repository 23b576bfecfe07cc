"""``credit studies`` (the HTTP client) and ``credit serve``, as users run them."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.api.config import ApiSettings
from tests.service.api.helpers import TINY, TOKEN, free_port, wait_status


def credit(*args: str, env: dict | None = None, timeout: float = 120,
           cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def client_env(server, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDIT_")}
    env.update({"CREDIT_URL": server.url, "CREDIT_TOKEN": TOKEN, **extra})
    return env


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_submit_list_show_cancel(queue_api, tmp_path):
    env = client_env(queue_api)
    spec = tmp_path / "study.json"
    spec.write_text(json.dumps({"space": "mnist-fc-backprop", "max_trials": 2, **TINY}))
    proc = credit("studies", "submit", str(spec), "--name", "from-the-cli", "--trials", "3",
                  "--sampler", "tpe", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "submitted study from-the-cli" in proc.stdout
    with queue_api.client() as c:
        stored = c.get("/studies/from-the-cli").json()
    assert stored["max_trials"] == 3 and stored["sampler"] == "tpe"  # flags over the file
    assert stored["spec"]["epochs"] == 1

    # its Ray job may have started already (the cluster is idle): PENDING or RUNNING
    listed = credit("studies", "list", "--status", "pending", "--status", "running", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "from-the-cli" in listed.stdout
    ended = credit("studies", "list", "--status", "succeeded", "--status", "cancelled", env=env)
    assert ended.returncode == 0 and "from-the-cli" not in ended.stdout
    shown = credit("studies", "show", "from-the-cli", env=env)
    assert shown.returncode == 0
    assert f"({stored['id']}): PENDING" in shown.stdout \
        or f"({stored['id']}): RUNNING" in shown.stdout
    assert json.loads(credit("studies", "show", stored["id"], "--json",
                             env=env).stdout)["name"] == "from-the-cli"
    no_best = credit("studies", "best", "from-the-cli", env=env)
    assert no_best.returncode == 2
    assert "409" in one_line(no_best) and "no completed trial" in no_best.stderr
    cancelled = credit("studies", "cancel", "from-the-cli", env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "CANCELLED" in cancelled.stdout
    again = credit("studies", "cancel", "from-the-cli", env=env)
    assert again.returncode == 2 and "ended already" in one_line(again)


def test_submit_wait_best_on_a_real_study(api):
    env = client_env(api)
    proc = credit("studies", "submit", "--space", "mnist-fc-backprop", "--name", "cli-waited",
                  "--trials", "2", "--concurrency", "2", "--epochs", "1",
                  "--batches-per-epoch", "5", "--dataset", "mnist-5k", "--wait", env=env,
                  timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "cli-waited" in proc.stderr  # the progress bar
    assert "SUCCEEDED" in proc.stdout
    assert "best test_error (min):" in proc.stdout and "[final]" in proc.stdout
    assert "MLflow: http://127.0.0.1:" in proc.stdout
    best = credit("studies", "best", "cli-waited", "--json", env=env)
    with api.client() as c:
        assert json.loads(best.stdout) == c.get("/studies/cli-waited/best").json()
    waited = credit("studies", "wait", "cli-waited", env=env)
    assert waited.returncode == 0 and "best test_error" in waited.stdout


@pytest.mark.parametrize("args, code, words", [
    (["studies", "submit", "--space", "no-such"], 2, ["422", "space", "unknown preset"]),
    (["studies", "submit", "--space", "mnist-fc-backprop", "--trials", "0"], 2,
     ["max_trials", ">= 1"]),
    (["studies", "submit"], 2, ["FILE or --space"]),
    (["studies", "submit", "missing.json"], 2, ["missing.json"]),
    (["studies", "show", "no-such-study"], 2,
     ["404", "no-such-study", "'credit studies list'"]),
    (["studies", "wait", "x", "--interval", "0"], 2, ["--interval"]),
    (["studies"], 2, ["missing study command"]),
])
def test_client_errors_are_one_line(queue_api, tmp_path, args, code, words):
    proc = credit(*args, env=client_env(queue_api), cwd=tmp_path)
    assert proc.returncode == code, proc.stderr
    line = one_line(proc)
    for word in words:
        assert word in line, line


def test_wrong_token_and_no_server(queue_api):
    proc = credit("studies", "list", env=client_env(queue_api, CREDIT_TOKEN="nope"))
    assert proc.returncode == 2 and "403" in one_line(proc)
    assert "CREDIT_TOKEN" in one_line(proc) and "CREDIT_HOME" in one_line(proc)
    env = client_env(queue_api)
    env["CREDIT_URL"] = f"http://127.0.0.1:{free_port()}"
    proc = credit("studies", "list", env=env)
    assert proc.returncode == 1 and "cannot reach the study service" in one_line(proc)
    assert "'credit serve --local'" in one_line(proc) and "CREDIT_URL" in one_line(proc)


def test_client_finds_the_server_through_credit_home(queue_api, tmp_path):
    """No --url, no CREDIT_URL: the address and token file recorded in CREDIT_HOME."""
    from service.local.discovery import write_secret

    home = tmp_path / "home"
    token_file = write_secret(home / "api_token", TOKEN)
    env = {k: v for k, v in client_env(queue_api).items()
           if k not in ("CREDIT_URL", "CREDIT_TOKEN")}
    env["CREDIT_HOME"] = str(home)
    # a record of a server that is running (this test's own pid stands for it)
    record = {"url": queue_api.url, "token_file": str(token_file), "pid": os.getpid()}
    (home / "server.json").write_text(json.dumps(record))
    proc = credit("studies", "list", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "studies" in proc.stdout.splitlines()[-1]
    # a record whose server has gone: says so, and what to start or set
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    (home / "server.json").write_text(json.dumps({**record, "pid": int(dead.stdout)}))
    proc = credit("studies", "list", env=env)
    assert proc.returncode == 1
    line = one_line(proc)
    assert "is not running" in line and "'credit serve --local'" in line and "CREDIT_URL" in line
    # no record at all: the default address, and the same advice when nothing answers there
    (home / "server.json").unlink()
    env["CREDIT_HOME"] = str(tmp_path / "empty")
    proc = credit("studies", "list", "--url", f"http://127.0.0.1:{free_port()}", env=env)
    assert proc.returncode == 1 and "(from --url)" in one_line(proc)


def test_serve_refuses_to_start_without_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDIT_")}
    env["CREDIT_HOME"] = str(tmp_path)
    proc = credit("serve", "--port", str(free_port()), env=env, timeout=60)
    assert proc.returncode == 2
    assert "CREDIT_API_TOKENS" in one_line(proc)


def test_settings_come_from_credit_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("CREDIT_HOME", str(tmp_path))
    monkeypatch.setenv("CREDIT_API_TOKENS", " a , b,,c ")
    monkeypatch.setenv("CREDIT_MAX_CONCURRENT_STUDIES", "7")
    monkeypatch.setenv("CREDIT_JOB_ENTRYPOINT_RESOURCES", '{"driver": 0.5}')
    monkeypatch.setenv("RAY_AUTH_TOKEN", "ray-secret")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    s = ApiSettings()
    assert s.tokens == ["a", "b", "c"]
    assert s.max_concurrent_studies == 7
    assert s.job_entrypoint_resources == {"driver": 0.5}
    assert s.database_url == f"sqlite:///{tmp_path / 'service.db'}"
    assert s.optuna_storage == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert s.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert s.mlflow_ui_url is None
    assert s.ray_auth_token.get_secret_value() == "ray-secret"
    assert "ray-secret" not in repr(s) and "'a'" not in repr(s)
    assert s.job_env()["CREDIT_HOME"] == str(tmp_path)


@pytest.mark.slow
def test_serve_local_starts_and_stops_the_whole_stack(tmp_path):
    """``credit serve --local``: Ray head + MLflow + API up; SIGTERM stops only them."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CREDIT_", "RAY_"))}
    env["CREDIT_HOME"] = str(tmp_path / "home")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--local", "--port",
                             str(port), "--cpus", "2", "--mlflow-port", str(free_port()),
                             "--dashboard-port", str(free_port())],
                            env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(url + "/healthz", timeout=2).json()
                if health["status"] == "ok":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert health and health["status"] == "ok", health
        home = tmp_path / "home"
        token = (home / "api_token").read_text().strip()
        assert oct((home / "api_token").stat().st_mode & 0o777) == "0o600"
        assert oct((home / "ray_token").stat().st_mode & 0o777) == "0o600"
        record = json.loads((home / "server.json").read_text())
        assert record["url"] == url and record["token_file"] == str(home / "api_token")
        assert record["ray_token_file"] == str(home / "ray_token")
        # a new shell with only CREDIT_HOME set finds this server and its token
        shell = {k: v for k, v in env.items() if k not in ("CREDIT_URL", "CREDIT_TOKEN")}
        listed = credit("studies", "list", env=shell)
        assert listed.returncode == 0, listed.stderr
        headers = {"Authorization": f"Bearer {token}"}
        health = httpx.get(url + "/healthz", headers=headers, timeout=10).json()  # + details
        r = httpx.post(url + "/studies", headers=headers, json={
            "name": "local", "space": "mnist-fc-backprop", "max_trials": 1, **TINY}, timeout=60)
        assert r.status_code == 201, r.text
        with httpx.Client(base_url=url, headers=headers) as c:
            final = wait_status(c, "local", ("SUCCEEDED", "FAILED"))
        assert final["status"] == "SUCCEEDED"
        assert final["links"]["mlflow"].startswith(health["mlflow_ui_url"])
        optuna_page = final["links"]["optuna"]
        assert optuna_page.startswith(record["optuna_dashboard"] + "/dashboard/studies/")
        assert httpx.get(optuna_page, timeout=30).status_code == 200
        # a study still running when the stack stops is cancelled, not left RUNNING
        r = httpx.post(url + "/studies", headers=headers, json={
            "name": "running-at-stop", "space": "mnist-fc-backprop", "max_trials": 4,
            "epochs": 3, "batches_per_epoch": 3000, "dataset": "mnist-5k"}, timeout=60)
        assert r.status_code == 201, r.text
        with httpx.Client(base_url=url, headers=headers) as c:
            wait_status(c, "running-at-stop", ("RUNNING",))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopped: API, MLflow, the Optuna dashboard and the Ray head." in err
    assert token not in err and (home / "ray_token").read_text().strip() not in err
    assert f"its token is in {home / 'ray_token'}" in err
    assert re.search(r"  Ray: up in \d+ s", err) and re.search(r"  MLflow: up in \d+ s", err)
    assert not (home / "server.json").exists()  # removed with the stack
    assert "cancelled 1 running studies" in err
    with sqlite3.connect(tmp_path / "home" / "service.db") as con:
        rows = dict(con.execute("select name, status from studies").fetchall())
    assert rows == {"local": "SUCCEEDED", "running-at-stop": "CANCELLED"}
    for url in (health["mlflow_ui_url"], f"http://127.0.0.1:{port}", record["optuna_dashboard"],
                re.search(r"Ray +(http://\S+)", err).group(1)):
        with pytest.raises(httpx.ConnectError):
            httpx.get(url, timeout=2)
    # nothing of that stack is left running (its session, or its Ray temp dir)
    temp = re.search(r"--temp-dir=(\S+)", (tmp_path / "home" / "logs" / "ray-start.log")
                     .read_text(errors="replace"))
    ps = subprocess.run(["ps", "-eo", "sid,args"], capture_output=True, text=True).stdout
    assert not [line for line in ps.splitlines() if line.split()[0] == str(proc.pid)]
    assert temp is None or temp.group(1) not in ps


def test_named_owners_tokens_must_do_as_mlflow_passwords(tmp_path):
    """Where MLflow asks who is there, a named owner's token is their MLflow password:
    MLflow's rule (12+ characters) and the service account's name are checked at start."""
    from service.api.config import ApiSettings

    ok = ApiSettings(home=tmp_path, api_tokens="alice:alice-token-012,root:root-token-0123:admin",
                     mlflow_password="service-password")
    assert ok.owners == {"alice": ("alice-token-012", False), "root": ("root-token-0123", True)}
    assert ok.mlflow_auth
    with pytest.raises(ValueError, match="owner 'alice'.*at least 12"):
        ApiSettings(home=tmp_path, api_tokens="alice:short", mlflow_password="service-password")
    with pytest.raises(ValueError, match="CREDIT_MLFLOW_PASSWORD must be at least 12"):
        ApiSettings(home=tmp_path, api_tokens="alice:alice-token-012", mlflow_password="short")
    with pytest.raises(ValueError, match="name of the service's MLflow account"):
        ApiSettings(home=tmp_path, api_tokens="credit-service:a-long-token-0123",
                    mlflow_password="service-password")
    # without MLflow's sign-in, short tokens stay allowed (the single-user default)
    assert ApiSettings(home=tmp_path, api_tokens="alice:short").owners == {
        "alice": ("short", False)}


def test_serve_local_refuses_short_owner_tokens_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CREDIT_", "RAY_"))}
    env.update(CREDIT_HOME=str(tmp_path), CREDIT_API_TOKENS="alice:short")
    done = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--local", "--port",
                           str(free_port())], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "owner 'alice'" in lines[0] and "12" in lines[0], lines
    assert "short" not in done.stderr  # the token itself is never printed
