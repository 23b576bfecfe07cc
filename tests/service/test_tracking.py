"""``service.records.tracking``: a study's parent run in a real MLflow store (sqlite, no server)."""

from __future__ import annotations

import pytest

from service.records import study_runs as R
from service.records import tags
from service.records import tracking as T
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
    run = R.open_study_run(_spec(uri), uri, experiment_id, resume=False)
    stored = T.client(uri).get_run(run.info.run_id)
    assert stored.data.tags[tags.STUDY] == "np-a" and stored.data.tags[tags.ROLE] == "study"
    assert stored.data.tags["credit.arm"] == "np"
    assert stored.data.params["seed"] == "3" and stored.data.params["training_seed"] == "9"
    assert stored.data.params["rule"] == "node_perturbation"
    spec = T.client(uri).download_artifacts(run.info.run_id, "study_spec.json")
    assert '"name": "np-a"' in open(spec).read().replace('":"', '": "')


def test_a_taken_name_is_refused_and_resume_finds_the_run(store):
    uri, experiment_id = store
    run = R.open_study_run(_spec(uri), uri, experiment_id, resume=False)
    T.client(uri).set_terminated(run.info.run_id, status="FAILED")
    with pytest.raises(StudyError, match="is taken"):
        R.open_study_run(_spec(uri), uri, experiment_id, resume=False)
    again = R.open_study_run(_spec(uri), uri, experiment_id, resume=True)
    assert again.info.run_id == run.info.run_id
    assert T.client(uri).get_run(run.info.run_id).info.status == "RUNNING"
    other = _spec(uri).model_copy(update={"name": "never-ran"})
    with pytest.raises(StudyError, match="no study named"):
        R.open_study_run(other, uri, experiment_id, resume=True)


def test_find_study_run(store):
    uri, experiment_id = store
    assert R.find_study_run(uri, "credit-search", "np-a") is None
    assert R.find_study_run(uri, "no-such-experiment", "np-a") is None
    run = R.open_study_run(_spec(uri), uri, experiment_id, resume=False)
    found = R.find_study_run(uri, "credit-search", "np-a")
    assert found.info.run_id == run.info.run_id
    assert found.info.experiment_id == experiment_id


def test_close_study_run_ends_parent_and_trials_once(store):
    uri, experiment_id = store
    c = T.client(uri)
    parent = R.open_study_run(_spec(uri), uri, experiment_id, resume=False)
    trial = c.create_run(experiment_id, tags={tags.PARENT: parent.info.run_id,
                                              tags.ROLE: "trial", tags.TRIAL: "t1"})
    assert R.close_study_run(uri, "credit-search", "np-a", "KILLED", "cancelled") == 2
    assert c.get_run(trial.info.run_id).info.status == "KILLED"
    ended = c.get_run(parent.info.run_id)
    assert ended.info.status == "KILLED"
    assert ended.data.tags[tags.FAILURE] == "cancelled"
    assert ended.data.tags["credit.status"] == "CANCELLED"
    assert R.close_study_run(uri, "credit-search", "np-a", "KILLED", "again") == 0
    assert R.close_study_run(uri, "credit-search", "unknown", "FAILED", "x") == 0


def test_stale_runs_close_pruned_lost_or_stale(store):
    """A RUNNING child run at a study's end: PRUNED (early-stopped), LOST (Tune does not
    know its trial: started after Tune's last save before a crash) or STALE."""
    from service.records.optuna_trials import LOST

    uri, experiment_id = store
    c = T.client(uri)
    parent = R.open_study_run(_spec(uri), uri, experiment_id, resume=False)
    runs = {t: c.create_run(experiment_id, tags={tags.PARENT: parent.info.run_id,
                                                 tags.ROLE: "trial", tags.TRIAL: t})
            for t in ("pruned", "lost", "stale", "active", "done")}
    c.set_terminated(runs["done"].info.run_id, status="FINISHED")
    closed = R.close_stale_runs(uri, experiment_id, parent.info.run_id, {"pruned"},
                                active_trial_ids={"active"},
                                known_trial_ids={"pruned", "stale", "active", "done"})
    assert closed == 3
    got = {t: c.get_run(r.info.run_id) for t, r in runs.items()}
    assert {t: r.info.status for t, r in got.items()} == {
        "pruned": "KILLED", "lost": "KILLED", "stale": "KILLED", "active": "RUNNING",
        "done": "FINISHED"}
    assert [got[t].data.tags.get(tags.STATE) for t in ("pruned", "lost", "stale")] == [
        "PRUNED", "LOST", "STALE"]
    assert got["lost"].data.tags[tags.FAILURE] == LOST
    assert tags.FAILURE not in got["stale"].data.tags


def test_unfinished_optuna_trials_fail_and_a_lost_one_says_why(tmp_path):
    import optuna

    from service.records.optuna_trials import (
        LOST,
        TUNE_TRIAL_ID,
        fail_unfinished_trials,
        open_storage,
    )

    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    for tune_id in ("known", "lost"):
        study.ask().set_user_attr(TUNE_TRIAL_ID, tune_id)
    done = study.ask()
    study.tell(done, 1.0)
    assert fail_unfinished_trials(storage, "s", {"known"}) == 2
    trials = {t.user_attrs.get(TUNE_TRIAL_ID): t for t in study.get_trials()}
    assert [trials[k].state.name for k in ("known", "lost", None)] == ["FAIL", "FAIL",
                                                                       "COMPLETE"]
    assert trials["lost"].user_attrs["failure"] == LOST
    assert "failure" not in trials["known"].user_attrs
    assert fail_unfinished_trials(storage, "s", {"known"}) == 0
    assert fail_unfinished_trials(storage, "never-ran") == 0


def test_a_dead_drivers_runs_are_closed_on_the_next_start(store):
    """Before: a crashed `credit search` left its parent and trial runs RUNNING for ever.
    After: the next study started on this host closes them FAILED, with the reason;
    a study whose driver is alive (this process) is left alone."""
    import subprocess
    import sys

    uri, experiment_id = store
    c = T.client(uri)
    alive = R.open_study_run(_spec(uri), uri, experiment_id, resume=False)
    dead_spec = StudySpec(name="np-dead", space="mnist-fc-node-perturbation", tracking_uri=uri)
    dead = R.open_study_run(dead_spec, uri, experiment_id, resume=False)
    trial = c.create_run(experiment_id, tags={tags.PARENT: dead.info.run_id,
                                              tags.ROLE: "trial", tags.TRIAL: "t0"})
    # the dead study's driver: a process that has exited since
    proc = subprocess.run([sys.executable, "-c", "from service.records import study_runs as R; "
                           "print(R.driver_id())"], capture_output=True, text=True, check=True)
    c.set_tag(dead.info.run_id, tags.DRIVER, proc.stdout.strip())

    # `--resume` of the dead study leaves it to the resume (its trials continue)
    assert R.close_orphaned_runs(uri, experiment_id, resuming="np-dead") == []
    assert c.get_run(dead.info.run_id).info.status == "RUNNING"
    assert R.close_orphaned_runs(uri, experiment_id) == ["np-dead"]
    closed = c.get_run(dead.info.run_id)
    assert closed.info.status == "FAILED"
    assert "is gone" in closed.data.tags[tags.FAILURE]
    assert c.get_run(trial.info.run_id).info.status == "KILLED"
    assert c.get_run(alive.info.run_id).info.status == "RUNNING"
    assert R.close_orphaned_runs(uri, experiment_id) == []


def test_a_lost_trial_that_finished_is_marked_lost_not_counted(store):
    from service.records.optuna_trials import LOST

    uri, experiment_id = store
    c = T.client(uri)
    parent = R.open_study_run(_spec(uri), uri, experiment_id, resume=False)
    runs = {t: c.create_run(experiment_id, tags={tags.PARENT: parent.info.run_id,
                                                 tags.ROLE: "trial", tags.TRIAL: t,
                                                 tags.STATE: "COMPLETE"})
            for t in ("lost", "kept")}
    for r in runs.values():
        c.set_terminated(r.info.run_id, status="FINISHED")
    assert R.mark_lost_runs(uri, experiment_id, parent.info.run_id, {"lost"}) == 1
    assert R.mark_lost_runs(uri, experiment_id, parent.info.run_id, {"lost"}) == 0
    lost, kept = (c.get_run(runs[t].info.run_id).data.tags for t in ("lost", "kept"))
    assert lost[tags.STATE] == "LOST" and lost[tags.FAILURE] == LOST
    assert kept[tags.STATE] == "COMPLETE" and tags.FAILURE not in kept
