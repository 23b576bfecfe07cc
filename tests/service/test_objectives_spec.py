"""Several objectives, warm starts and enqueued configurations in ``StudySpec`` and the
CLI flags (no Ray): every bad value names its field; the stored form reads back."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.cli import build_parser, main
from service.commands.options import study_fields, study_flag, validation_message
from service.spec import SpecProblems, StudySpec

TWO = [{"metric": "test_error", "mode": "min"}, {"metric": "angle/fc2", "mode": "min"}]


def _spec(**fields) -> StudySpec:
    return StudySpec(**{"name": "s", "space": "mnist-fc-node-perturbation", **fields})


def _problems(**fields) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        _spec(**fields)
    found = {}
    for error in info.value.errors():
        inner = error["ctx"]["error"]
        assert isinstance(inner, SpecProblems), error
        found.update({".".join(map(str, loc)): reason for loc, reason in inner.problems})
    return found


def test_several_objectives_the_first_is_tunes_and_the_stored_form_reads_back():
    spec = _spec(objectives=TWO, sampler="nsga2")
    assert spec.multi_objective and spec.objective.metric == "test_error"
    again = StudySpec.model_validate_json(spec.model_dump_json())
    assert [o.metric for o in again.objectives] == ["test_error", "angle/fc2"]
    one = _spec()
    assert not one.multi_objective and one.objectives == [one.objective]
    assert StudySpec.model_validate_json(one.model_dump_json()).objectives == [one.objective]


def test_bad_objectives_name_their_field():
    assert "named twice" in _problems(objectives=[TWO[0], TWO[0]])["objectives.1.metric"]
    assert "unknown metric 'nope'" in _problems(
        objectives=[TWO[0], {"metric": "nope"}])["objectives.1.metric"]
    assert "not both" in _problems(objective={"metric": "test_loss"},
                                   objectives=TWO)["objectives"]
    found = _problems(objectives=TWO, sampler="cmaes", early_stopping=True, final_seeds=2)
    assert "'cmaes' optimises one objective" in found["sampler"]
    assert "ASHA" in found["early_stopping"] and "Pareto" in found["final_seeds"]
    for sampler in ("random", "tpe", "qmc", "nsga2"):
        assert _spec(objectives=TWO, sampler=sampler).sampler == sampler


def test_enqueued_configurations_are_checked_against_the_space():
    found = _problems(enqueue=[{"lr": 0.01}, {"lr": 5.0, "width": 3}])
    assert set(found) == {"enqueue.1.lr", "enqueue.1.width"}
    assert "outside the space" in found["enqueue.1.lr"]
    assert "not a searched parameter" in found["enqueue.1.width"]
    assert "more than max_trials=1" in _problems(enqueue=[{"lr": 0.01}] * 2,
                                                 max_trials=1)["enqueue"]
    assert _spec(enqueue=[{"lr": 0.01}]).enqueue == [{"lr": 0.01}]


def test_flags_make_the_lists_and_errors_name_the_flag():
    args = build_parser().parse_args(
        ["search", "--space", "mnist-fc-node-perturbation", "--objective", "test_error:min",
         "--objective", "angle/fc2:min", "--warm-start", "a", "--warm-start", "b",
         "--enqueue", '{"lr": 0.01}', "--enqueue", '[{"lr": 0.02}, {"noise_std": 0.001}]'])
    fields = study_fields(args, {}, extra=("data_dir", "tracking_uri", "storage"))
    assert fields == {"objectives": TWO, "warm_start": ["a", "b"],
                      "enqueue": [{"lr": 0.01}, {"lr": 0.02}, {"noise_std": 0.001}]}
    with pytest.raises(ValidationError) as info:
        _spec(**{**fields, "enqueue": [{"lr": 9.0}]}, sampler="cmaes")
    text = validation_message(info.value, study_flag)
    assert "--sampler: 'cmaes'" in text and "--enqueue[0].lr: 9.0 is outside" in text


@pytest.mark.parametrize("flags, expected", [
    (["--objective", "test_error"], "--objective: expected METRIC:MODE"),
    (["--objective", "test_error:min", "--metric", "test_loss"], "not both"),
    (["--objective", "test_error:min", "--objective", "test_error:max"], "named twice"),
    (["--objective", "test_error:min", "--objective", "angle/fc2:min", "--asha"],
     "--asha: ASHA"),
    (["--enqueue", "{lr: 1}"], "--enqueue: not JSON"),
    (["--enqueue", "[1]"], "--enqueue: expected a JSON object"),
])
def test_bad_flags_exit_2_with_one_line(flags, expected, capsys):
    code = main(["search", "--space", "mnist-fc-node-perturbation", *flags])
    err = capsys.readouterr().err
    assert code == 2 and expected in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
