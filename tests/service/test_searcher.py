"""``service.runner.searcher.OptunaAskTell``: Optuna's storage is the truth of a search — its
states, its budget, and the trials a crash lost (a real sqlite Optuna storage; no Ray
cluster: Tune's calls are made as Tune makes them).

Ray is imported in the tests, once the session's Ray cluster fixture has set the auth
token: Ray reads it once per process (imported at collection, every later test of the
session failed to join its cluster with InvalidAuthToken)."""

from __future__ import annotations

import optuna
import pytest

from service.records.optuna_trials import LOST, TUNE_TRIAL_ID
from service.records.optuna_trials import open_storage as open_optuna_storage

SPACE = {"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)}


def _searcher(storage, max_trials=3):
    from service.runner.searcher import OptunaAskTell

    return OptunaAskTell(space=SPACE, metric="test_error", mode="min", study_name="s",
                         storage=storage, sampler="random", seed=0, epochs=2,
                         max_trials=max_trials)


def _trials(storage):
    study = optuna.load_study(study_name="s", storage=storage)
    return {t.user_attrs[TUNE_TRIAL_ID]: t for t in study.get_trials()}


def test_states_told_as_the_trials_ended(ray_cluster, tmp_path):
    from ray.tune.search import Searcher

    storage = open_optuna_storage(f"sqlite:///{tmp_path / 'o.db'}")
    s = _searcher(storage)
    for tid in ("a", "b", "c"):
        assert 1e-3 <= s.suggest(tid)["lr"] <= 1.0
    s.on_trial_complete("a", {"test_error": 0.1, "epoch": 2})
    s.on_trial_complete("b", {"test_error": 0.3, "epoch": 1})  # stopped early (ASHA)
    s.on_trial_complete("c", None, error=True)
    s.on_trial_complete("a", {"test_error": 0.9, "epoch": 2})  # told twice: kept
    got = _trials(storage)
    assert [got[t].state.name for t in "abc"] == ["COMPLETE", "PRUNED", "FAIL"]
    assert got["a"].value == pytest.approx(0.1)
    assert s.suggest("d") == Searcher.FINISHED  # the budget of 3 is spent


def test_a_restore_marks_trials_started_after_the_save_lost(ray_cluster, tmp_path):
    from ray.tune.search import Searcher

    storage = open_optuna_storage(f"sqlite:///{tmp_path / 'o.db'}")
    s = _searcher(storage)
    s.suggest("a")
    s.suggest("b")
    s.save(str(tmp_path / "state.pkl"))  # Tune's last save of the experiment
    s.suggest("c")  # started after it, running when the driver died
    s.on_trial_complete("a", {"test_error": 0.2, "epoch": 2})

    restored = _searcher(storage)
    restored.restore(str(tmp_path / "state.pkl"))
    got = _trials(storage)
    assert got["c"].state.name == "FAIL" and got["c"].user_attrs["failure"] == LOST
    assert got["b"].state.name == "RUNNING"  # known to Tune: it resumes
    assert "failure" not in got["a"].user_attrs
    # the lost trial does not count: one more trial replaces it, then the budget is spent
    assert isinstance(restored.suggest("d"), dict)
    assert restored.suggest("e") == Searcher.FINISHED
    restored.on_trial_complete("b", {"test_error": 0.1, "epoch": 2})
    assert _trials(storage)["b"].state.name == "COMPLETE"
