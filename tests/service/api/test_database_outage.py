"""The service database restarts (PostgreSQL down for seconds): while it is down every
request that needs it is a 503 naming the database, with the usual JSON error body
(never a 500, never plain text), the sync logs it and carries on; once it is back the
API answers again on its own (its engine replaces the dead connections).

A real PostgreSQL (``/usr/lib/postgresql/15/bin``, run as the ``postgres`` user on a
private port, its data in a temporary directory) and a real ``credit serve`` on it;
neither Ray nor MLflow is needed (their addresses refuse).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

from search_spaces import load_space
from service.records import db
from service.spec import StudySpec
from tests.service.api.helpers import TOKEN, free_port, start_bare_api

PG_BIN = Path("/usr/lib/postgresql/15/bin")
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (PostgreSQL runs as the postgres user)"
    if not (PG_BIN / "postgres").exists() or not (PG_BIN / "initdb").exists():
        return f"no PostgreSQL binaries in {PG_BIN}"
    if shutil.which("runuser") is None:
        return "no runuser"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres user"
    if importlib.util.find_spec("psycopg") is None:
        return "no psycopg"
    return None


class Postgres:
    """PostgreSQL on 127.0.0.1:``port``, its data and socket in a directory of its own;
    ``stop`` (a fast shutdown: it ends the sessions the API holds) and ``start`` again
    on the same data and port."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="credit-pg-"))
        self.data, self.sock = self.root / "data", self.root / "sock"
        for d in (self.root, self.data, self.sock):
            d.mkdir(exist_ok=True)
            shutil.chown(d, "postgres", "postgres")
        self.port = free_port()
        self.log = self.root / "postgres.log"
        self.proc: subprocess.Popen | None = None
        r = subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D",
                            str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr[-1000:]}")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> Postgres:
        import psycopg

        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                ["runuser", "-u", "postgres", "--", str(PG_BIN / "postgres"), "-D",
                 str(self.data), "-p", str(self.port), "-k", str(self.sock),
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres "
                                "dbname=postgres", connect_timeout=2).close()
                return self
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start: "
                                       f"{self.log.read_text()[-1000:]}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None:
            return
        # runuser passes the signal on; SIGINT is PostgreSQL's fast shutdown (SIGTERM,
        # its "smart" one, would wait for the API's pooled sessions to end)
        os.killpg(self.proc.pid, signal.SIGINT)
        self.proc.wait(60)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres():
    reason = _why_not()
    if reason is not None:
        pytest.skip(f"no PostgreSQL to restart: {reason}")
    server = Postgres().start()
    yield server
    server.remove()


def _stored_study(url: str, name: str) -> str:
    """A SUCCEEDED study, stored as the API stores one (the sync leaves it alone)."""
    spec = StudySpec(name=name, space=load_space("mnist-fc-backprop"), max_trials=2)
    database = db.Database(url)
    database.create_all()
    study_id = str(uuid.uuid4())
    with database.session() as session:
        db.create_study(session, db.StudyRecord(
            id=study_id, name=name, status=db.SUCCEEDED, job_id=f"credit-{name}",
            spec=json.loads(spec.model_dump_json()), message="", owner=""))
    database.dispose()
    return study_id


def _answers(c: httpx.Client, study_id: str) -> dict[str, int]:
    return {path: c.get(path).status_code for path in (f"/studies/{study_id}", "/studies")}


def _assert_database_named(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    (detail,) = r.json()["detail"]
    assert detail["loc"] == ["database"] and detail["type"] == "unavailable"
    assert detail["msg"].startswith("the study database is unavailable (")
    assert "\n" not in detail["msg"] and "[SQL:" not in detail["msg"]
    assert "sqlalche.me" not in detail["msg"]
    assert r.headers.get("Retry-After")


def test_the_api_answers_503_while_the_database_restarts(postgres, tmp_path):
    study_id = _stored_study(postgres.url, "survives-a-restart")
    api = start_bare_api(tmp_path / "home", database_url=postgres.url, health_interval_s="1")
    try:
        with httpx.Client(base_url=api.url, headers=AUTH, timeout=30) as c:
            assert _answers(c, study_id) == {f"/studies/{study_id}": 200, "/studies": 200}
            postgres.stop()
            for path in (f"/studies/{study_id}", "/studies", f"/studies/{study_id}/trials",
                         "/pages/studies"):
                _assert_database_named(c.get(path))
            # the study limit (a middleware) counts studies in the database too
            _assert_database_named(c.post("/studies", json={"name": "x", "space": "y"}))
            ready = httpx.get(api.url + "/readyz")
            deadline = time.monotonic() + 15
            while ready.status_code != 503 and time.monotonic() < deadline:
                time.sleep(0.3)
                ready = httpx.get(api.url + "/readyz")
            assert (ready.status_code, ready.json()) == (503, {"status": "degraded"})
            assert httpx.get(api.url + "/livez").status_code == 200
            time.sleep(2)  # the sync meets the database down a round or two

            postgres.start()
            deadline = time.monotonic() + 30
            answers = _answers(c, study_id)
            while set(answers.values()) != {200} and time.monotonic() < deadline:
                time.sleep(0.5)
                answers = _answers(c, study_id)
            assert set(answers.values()) == {200}, answers
            assert c.get(f"/studies/{study_id}").json()["name"] == "survives-a-restart"
        log = api.log.read_text()
        assert "study sync: the study database is unavailable" in log, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
        assert api.proc is not None and api.proc.poll() is None  # it carried on
    finally:
        api.stop()
