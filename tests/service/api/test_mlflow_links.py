"""The study link opens MLflow 3.17's runs table on the study's shared view: its runs
only, best first, its objective's column (rendered in headless Chromium against a real
``mlflow server``)."""

from __future__ import annotations

import re

import pytest

from service.records.links import mlflow_runs
from service.records.study_runs import save_study_view
from service.records.trial_logger import run_name
from tests.service.api.browser import dump_dom


def test_run_names_are_readable() -> None:
    assert run_name("s", "trial", "a1b2c_00003", 0) == "s/trial-3"
    assert run_name("s", "final", "a1b2c_00001", 2) == "s/seed-2"


@pytest.mark.slow
def test_study_link_lands_on_its_runs_best_first(mlflow_server) -> None:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(mlflow_server)
    eid = c.create_experiment("link-check")
    parent = c.create_run(eid, run_name="s1", tags={"credit.study": "s1"})
    for i, value in enumerate([0.3, 0.1]):
        r = c.create_run(eid, run_name=f"s1/trial-{i}", tags={
            "credit.study": "s1", "mlflow.parentRunId": parent.info.run_id})
        c.log_metric(r.info.run_id, "test_error", value)
        c.log_param(r.info.run_id, "lr", str(0.01 * (i + 1)))
        c.set_terminated(r.info.run_id)
    c.create_run(eid, run_name="other/trial-0", tags={"credit.study": "other"})
    save_study_view(c, eid, "s1", [{"metric": "test_error", "mode": "min"}], ["lr"])
    dom = dump_dom(mlflow_runs(mlflow_server, eid, "s1"), budget_ms=30000)
    assert "Training runs" in dom  # the runs table, not the GenAI traces overview
    assert "0.1" in dom and "0.02" in dom  # the view's columns: the metric, the parameter
    names = re.findall(r">(s1/trial-\d|other/trial-0)<", dom)
    assert names[:2] == ["s1/trial-1", "s1/trial-0"], names  # filtered, best first, flat
    assert "other/trial-0" not in names
