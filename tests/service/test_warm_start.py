"""Warm starts and enqueued configurations on a real Optuna storage (sqlite), through the
searcher as Tune calls it (``service.runner.searcher.OptunaAskTell``; Ray imported once
the session's cluster has set its token, as in ``test_searcher.py``)."""

from __future__ import annotations

import optuna
import pytest

from service.records.optuna_trials import TUNE_TRIAL_ID, open_storage
from service.records.warm_start import (
    METRICS_ATTR,
    WARM_START_ATTR,
    own_trials,
    seed_study,
    warm_trials,
)
from service.spec import StudyProblems, StudySpec

SPACE = "mnist-fc-node-perturbation"


def _spec(storage_url: str, name: str, **fields) -> StudySpec:
    return StudySpec(**{"name": name, "space": SPACE, "max_trials": 3, "epochs": 2,
                        "storage": storage_url, **fields})


def _searcher(spec: StudySpec, storage):
    from service.runner.tuner import make_searcher

    return make_searcher(spec, storage)


def _run(spec, storage, results):
    """Ask and tell as Tune does: one trial per result, told COMPLETE after 2 epochs."""
    seed_study(spec, storage, warm_trials(spec, storage))
    s = _searcher(spec, storage)
    asked = []
    for i, result in enumerate(results):
        params = s.suggest(f"t{i}")
        asked.append(params)
        s.on_trial_complete(f"t{i}", {**result(params), "epoch": 2})
    return s, asked


def test_warm_trials_feed_the_sampler_but_are_not_the_studys_own(ray_cluster, tmp_path):
    from ray.tune.search import Searcher

    url = f"sqlite:///{tmp_path / 'o.db'}"
    storage = open_storage(url)
    earlier = _spec(url, "a", sampler="random", max_trials=4)
    _run(earlier, storage, [lambda p: {"test_error": p["lr"], "angle/fc2": 40.0}] * 4)
    a = optuna.load_study(study_name="a", storage=storage)
    assert a.metric_names == ["test_error"]
    assert all(t.user_attrs[METRICS_ATTR]["angle/fc2"] == 40.0 for t in a.trials)

    # a two-objective TPE study warm-started from the single-objective one: angle/fc2
    # comes from the metrics its trials reported
    spec = _spec(url, "b", sampler="tpe", warm_start=["a"],
                 objectives=[{"metric": "test_error"}, {"metric": "angle/fc2"}])
    s, _ = _run(spec, storage, [lambda p: {"test_error": 0.5, "angle/fc2": 30.0}] * 3)
    b = optuna.load_study(study_name="b", storage=storage)
    warm = [t for t in b.trials if WARM_START_ATTR in t.user_attrs]
    assert [t.user_attrs[WARM_START_ATTR] for t in warm] == [f"a#{i}" for i in range(4)]
    assert [t.values for t in warm] == [[t.value, 40.0] for t in a.trials]
    assert [t.params for t in warm] == [t.params for t in a.trials]
    # the sampler sees them (TPE's history), the budget does not
    assert isinstance(s.study.sampler, optuna.samplers.TPESampler)
    assert len(s.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 7
    assert len(own_trials(b.trials)) == 3 and s.suggest("t9") == Searcher.FINISHED


def test_tpe_starts_from_the_warm_trials(ray_cluster, tmp_path):
    """TPE samples at random for its first 10 trials; warm-started from 12, its first own
    trial is already model-based: it differs from the same seed's cold first draw."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    storage = open_storage(url)
    _run(_spec(url, "a", sampler="random", max_trials=12), storage,
         [lambda p: {"test_error": abs(p["lr"] - 0.01)}] * 12)
    _, cold = _run(_spec(url, "cold", sampler="tpe", seed=5, max_trials=1), storage,
                   [lambda p: {"test_error": 0.1}])
    _, warm = _run(_spec(url, "warm", sampler="tpe", seed=5, max_trials=1, warm_start=["a"]),
                   storage, [lambda p: {"test_error": 0.1}])
    random_first = optuna.samplers.RandomSampler(seed=5)
    assert cold != warm
    study = optuna.create_study(sampler=random_first)
    t = study.ask(_spec(url, "x").search_space().to_optuna())
    assert cold[0] == t.params  # cold TPE: its startup draw; warm: the model's


def test_enqueued_configurations_come_first(ray_cluster, tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    storage = open_storage(url)
    spec = _spec(url, "q", sampler="tpe", enqueue=[{"lr": 0.01}, {"lr": 0.2, "noise_std": 0.05}])
    _, asked = _run(spec, storage, [lambda p: {"test_error": 0.3}] * 3)
    assert asked[0]["lr"] == 0.01 and asked[1]["lr"] == 0.2 and asked[1]["noise_std"] == 0.05
    assert set(asked[0]) == {"lr", "noise_std", "feedback_lr"}  # the rest sampled
    trials = optuna.load_study(study_name="q", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert [t.user_attrs[TUNE_TRIAL_ID] for t in trials] == ["t0", "t1", "t2"]


def test_trials_that_do_not_fit_are_named(ray_cluster, tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    storage = open_storage(url)
    _run(_spec(url, "a", sampler="random", max_trials=3), storage,
         [lambda p: {"test_error": 0.2}] * 3)
    # a narrower lr range: which trials fall outside depends on the draws; each is named
    a = optuna.load_study(study_name="a", storage=storage).trials
    cut = sorted(t.params["lr"] for t in a)[1]
    narrow = {"name": "narrow", "experiment": "mnist-fc", "rule": "node_perturbation",
              "fixed": {"batch_size": 32, "momentum": 0.9},
              "params": {"lr": {"type": "float", "low": cut, "high": 0.3, "log": True},
                         "noise_std": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
                         "feedback_lr": {"type": "float", "low": 1e-3, "high": 1.0,
                                         "log": True}}}
    spec = StudySpec(name="b", space=narrow, warm_start=["a", "nope"], storage=url,
                     objectives=[{"metric": "test_error"}, {"metric": "angle/fc2"}])
    with pytest.raises(StudyProblems) as info:
        warm_trials(spec, storage)
    problems = info.value.problems
    assert (("warm_start", 1), "no study named 'nope'") in problems
    below = [t.number for t in a if t.params["lr"] < cut]
    for n in below:
        assert any(loc == ("warm_start", 0) and f"trial {n}: param lr=" in reason
                   and "outside the new space" in reason for loc, reason in problems)
    # the others fit the space but lack the second objective (never reported)
    lacking = [r for _, r in problems if "no value of objective angle/fc2" in r]
    assert len(lacking) == 3 - len(below)
