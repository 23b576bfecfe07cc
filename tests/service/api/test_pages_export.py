"""A real study's trials out: ``GET /studies/{id}/export`` (CSV, JSON), ``credit studies
export``, and the HTML page at ``/`` in headless Chromium (DOM and a screenshot)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.api.export import export_rows, render
from tests.service.api.browser import dump_dom, screenshot
from tests.service.api.helpers import TINY, TOKEN, wait_status

REPO = Path(__file__).resolve().parents[3]
SHOTS = Path(os.environ.get("CREDIT_SCREENSHOT_DIR", "/tmp"))


@pytest.fixture(scope="module")
def done_study(api):
    with api.client() as c:
        r = c.post("/studies", json={"name": "export-me", "space": "mnist-fc-backprop",
                                     "max_trials": 2, "parallel_trials": 2, **TINY})
        assert r.status_code == 201, r.text
        final = wait_status(c, "export-me", ("SUCCEEDED", "FAILED"))
    assert final["status"] == "SUCCEEDED", final
    return final


def test_export_rows_name_the_objective_and_keep_failures() -> None:
    trials = [{"number": 1, "trial_id": "a_00001", "state": "FAILED", "params": {"lr": 0.1},
               "value": None, "failure": "diverged: loss is nan", "mlflow_run_id": "r1",
               "mlflow_url": "http://m/#/experiments/1/runs/r1"},
              {"number": 0, "trial_id": "a_00000", "state": "COMPLETE",
               "params": {"lr": 0.01}, "value": 0.25, "mlflow_run_id": "r0",
               "mlflow_url": None}]
    rows = export_rows("s", {"metric": "test_error", "mode": "min"}, trials)
    assert [r["trial"] for r in rows] == [0, 1]
    assert rows[0]["test_error"] == 0.25 and rows[1]["failure"] == "diverged: loss is nan"
    table = list(csv.DictReader(io.StringIO(render(rows, "csv", {}))))
    assert table[1]["param.lr"] == "0.1" and table[0]["failure"] == ""
    with pytest.raises(ValueError, match="valid: csv, json"):
        render(rows, "xlsx", {})


def test_export_over_http_has_a_row_per_trial(api, done_study) -> None:
    with api.client() as c:
        r = c.get("/studies/export-me/export", params={"format": "csv"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/csv")
        assert 'filename="export-me.csv"' in r.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(r.text)))
        j = c.get("/studies/export-me/export", params={"format": "json"}).json()
        bad = c.get("/studies/export-me/export", params={"format": "xlsx"})
    assert len(rows) == 2 and j["count"] == 2
    for row in rows:
        assert row["state"] == "COMPLETE" and row["study"] == "export-me"
        assert 0.0003 <= float(row["param.lr"]) <= 0.3
        assert 0.0 <= float(row["test_error"]) <= 1.0
        assert row["mlflow_url"].endswith(f"/runs/{row['mlflow_run_id']}")
    assert {r["trial"] for r in j["data"]} == {int(r["trial"]) for r in rows}
    assert min(float(r["test_error"]) for r in rows) == done_study["best"]["value"]
    assert bad.status_code == 422 and "format" in bad.text


def test_credit_studies_export(api, done_study, tmp_path) -> None:
    env = dict(os.environ, CREDIT_URL=api.url, CREDIT_TOKEN=TOKEN, PYTHONPATH=str(REPO))
    out = tmp_path / "t.json"
    proc = subprocess.run([sys.executable, "-m", "service.cli", "studies", "export",
                           "export-me", "--format", "json", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["count"] == 2 and data["objective"]["metric"] == "test_error"


def test_study_answers_link_to_the_runs_table(done_study) -> None:
    link = done_study["links"]["mlflow"]
    assert "/#/experiments/" in link and "/runs?viewStateShareKey=credit-export-me" in link
    assert "export-me" in link and done_study["links"]["mlflow_parent_run"].endswith(
        done_study["mlflow_parent_run_id"])


def test_page_lists_the_study_and_its_trials(api, done_study) -> None:
    dom = dump_dom(f"{api.url}/#token={TOKEN}")
    assert 'id="studies"' in dom and ">export-me</a>" in dom, dom[-3000:]
    assert 'class="SUCCEEDED">SUCCEEDED' in dom and "2/2" in dom
    assert f"{done_study['best']['value']:.4g}" in dom
    shot = screenshot(f"{api.url}/#token={TOKEN}", SHOTS / "credit-studies.png")
    study_dom = dump_dom(f"{api.url}/?study=export-me#token={TOKEN}")
    assert 'id="trials"' in study_dom and study_dom.count('class="COMPLETE">COMPLETE') == 2
    screenshot(f"{api.url}/?study=export-me#token={TOKEN}", SHOTS / "credit-study.png")
    assert shot.exists()


def test_page_without_a_token_asks_for_one(api) -> None:
    dom = dump_dom(f"{api.url}/")
    assert 'id="token"' in dom and 'style="display: block;"' in dom
    assert 'id="studies"' not in dom
