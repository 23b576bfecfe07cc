"""``service.tracking``: a study's parent run in a real MLflow store (sqlite, no server)."""

from __future__ import annotations

import pytest

from service import tracking as T
from service.spec import StudyError, StudySpec


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = T.ensure_experiment(uri, "credit-search", (tmp_path / "art").as_uri())
    return uri, experiment_id


def _spec(uri: str) -> StudySpec:
    return StudySpec(name="np-a", space="mnist-fc-node-perturbation", seed=3, training_seed=9,
                     tracking_uri=uri, labels={"arm": "np"})


def test_ensure_experiment_is_idempotent(store, tmp_path):
    uri, experiment_id = store
    assert T.ensure_experiment(uri, "credit-search", None) == experiment_id


def test_open_study_run_records_tags_params_and_spec(store):
    uri, experiment_id = store
    run = T.open_study_run(_spec(uri), uri, experiment_id, resume=False)
    stored = T.client(uri).get_run(run.info.run_id)
    assert stored.data.tags[T.STUDY_TAG] == "np-a" and stored.data.tags[T.ROLE_TAG] == "study"
    assert stored.data.tags["credit.arm"] == "np"
    assert stored.data.params["seed"] == "3" and stored.data.params["training_seed"] == "9"
    assert stored.data.params["rule"] == "node_perturbation"
    spec = T.client(uri).download_artifacts(run.info.run_id, "study_spec.json")
    assert '"name": "np-a"' in open(spec).read().replace('":"', '": "')


def test_a_taken_name_is_refused_and_resume_finds_the_run(store):
    uri, experiment_id = store
    run = T.open_study_run(_spec(uri), uri, experiment_id, resume=False)
    T.client(uri).set_terminated(run.info.run_id, status="FAILED")
    with pytest.raises(StudyError, match="is taken"):
        T.open_study_run(_spec(uri), uri, experiment_id, resume=False)
    again = T.open_study_run(_spec(uri), uri, experiment_id, resume=True)
    assert again.info.run_id == run.info.run_id
    assert T.client(uri).get_run(run.info.run_id).info.status == "RUNNING"
    other = _spec(uri).model_copy(update={"name": "never-ran"})
    with pytest.raises(StudyError, match="no study named"):
        T.open_study_run(other, uri, experiment_id, resume=True)


def test_find_study_run(store):
    uri, experiment_id = store
    assert T.find_study_run(uri, "credit-search", "np-a") is None
    assert T.find_study_run(uri, "no-such-experiment", "np-a") is None
    run = T.open_study_run(_spec(uri), uri, experiment_id, resume=False)
    found = T.find_study_run(uri, "credit-search", "np-a")
    assert found.info.run_id == run.info.run_id
    assert found.info.experiment_id == experiment_id


def test_close_study_run_ends_parent_and_trials_once(store):
    uri, experiment_id = store
    c = T.client(uri)
    parent = T.open_study_run(_spec(uri), uri, experiment_id, resume=False)
    trial = c.create_run(experiment_id, tags={T.PARENT_TAG: parent.info.run_id,
                                              T.ROLE_TAG: "trial", T.TRIAL_TAG: "t1"})
    assert T.close_study_run(uri, "credit-search", "np-a", "KILLED", "cancelled") == 2
    assert c.get_run(trial.info.run_id).info.status == "KILLED"
    ended = c.get_run(parent.info.run_id)
    assert ended.info.status == "KILLED"
    assert ended.data.tags[T.FAILURE_TAG] == "cancelled"
    assert ended.data.tags["credit.status"] == "CANCELLED"
    assert T.close_study_run(uri, "credit-search", "np-a", "KILLED", "again") == 0
    assert T.close_study_run(uri, "credit-search", "unknown", "FAILED", "x") == 0


def test_a_dead_drivers_runs_are_closed_on_the_next_start(store):
    """Before: a crashed `credit search` left its parent and trial runs RUNNING for ever.
    After: the next study started on this host closes them FAILED, with the reason;
    a study whose driver is alive (this process) is left alone."""
    import subprocess
    import sys

    uri, experiment_id = store
    c = T.client(uri)
    alive = T.open_study_run(_spec(uri), uri, experiment_id, resume=False)
    dead_spec = StudySpec(name="np-dead", space="mnist-fc-node-perturbation", tracking_uri=uri)
    dead = T.open_study_run(dead_spec, uri, experiment_id, resume=False)
    trial = c.create_run(experiment_id, tags={T.PARENT_TAG: dead.info.run_id,
                                              T.ROLE_TAG: "trial", T.TRIAL_TAG: "t0"})
    # the dead study's driver: a process that has exited since
    proc = subprocess.run([sys.executable, "-c", "from service import tracking as T; "
                           "print(T.driver_id())"], capture_output=True, text=True, check=True)
    c.set_tag(dead.info.run_id, T.DRIVER_TAG, proc.stdout.strip())

    assert T.close_orphaned_runs(uri, experiment_id) == ["np-dead"]
    closed = c.get_run(dead.info.run_id)
    assert closed.info.status == "FAILED"
    assert "is gone" in closed.data.tags[T.FAILURE_TAG]
    assert c.get_run(trial.info.run_id).info.status == "KILLED"
    assert c.get_run(alive.info.run_id).info.status == "RUNNING"
    assert T.close_orphaned_runs(uri, experiment_id) == []
