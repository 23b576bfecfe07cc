"""``StudySpec``: the one declaration of a study, and what is derived from it (no Ray)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from search_spaces import SearchSpace
from service.cli import build_parser, main
from service.commands.options import study_fields, study_flag, study_options
from service.spec import SAMPLERS, SERVER_FIELDS, StudySpec


def _spec(**fields) -> StudySpec:
    return StudySpec(**{"name": "s", "space": "mnist-fc-node-perturbation", **fields})


def test_space_is_resolved_once_when_the_spec_is_validated():
    spec = _spec()
    assert isinstance(spec.space, SearchSpace)
    assert spec.search_space() is spec.space
    # the stored form (JSON) reads back without the preset
    again = StudySpec.model_validate_json(spec.model_dump_json())
    assert again.space == spec.space


def test_unknown_preset_names_the_space_field():
    with pytest.raises(ValidationError) as info:
        _spec(space="no-such-space")
    error = info.value.errors()[0]
    assert error["loc"] == ("space",)
    assert "unknown preset" in error["msg"]


def test_param_space_plus_sampled_values_is_the_checked_trial_config():
    spec = _spec(epochs=3, dataset="mnist-5k", seed=4)
    sampled = spec.search_space().midpoint()
    config = spec.trial_config(sampled)
    assert {**spec.param_space(), **sampled} == {
        k: v for k, v in config.model_dump().items()
        if k in {**spec.param_space(), **sampled}}
    assert config.epochs == 3 and config.dataset == "mnist-5k"


def test_training_seed_defaults_to_the_sampler_seed_and_can_differ():
    assert _spec(seed=7).trial_config({}).seed == 7
    assert _spec(seed=7).param_space()["seed"] == 7
    spec = _spec(seed=7, training_seed=11)
    assert spec.trial_config({}).seed == 11
    assert spec.param_space()["seed"] == 11
    assert spec.trial_config({}, seed=3).seed == 3  # a final-evaluation seed


def test_unknown_sampler_lists_the_valid_ones():
    with pytest.raises(ValidationError) as info:
        _spec(sampler="grid")
    assert all(name in str(info.value) for name in SAMPLERS)


def test_every_client_field_is_a_flag_of_search_and_of_studies_submit(capsys):
    client_fields = [f for f in StudySpec.model_fields if f not in SERVER_FIELDS]
    for command in (["search"], ["studies", "submit"]):
        assert main([*command, "--help"]) == 0
        text = capsys.readouterr().out
        for field in client_fields:
            if field in ("space", "objective", "resources"):
                continue  # --space is the command's own; nested ones field by field
            assert study_flag(field) in text, (command, field)
        for nested in ("objective.metric", "objective.mode", "resources.cpu", "resources.gpu"):
            assert study_flag(nested) in text
    assert "--training-seed N" in text


def test_flags_become_spec_fields_nested_ones_merged_into_the_file_value():
    args = build_parser().parse_args(
        ["studies", "submit", "--trials", "3", "--mode", "max", "--cpus-per-trial", "2",
         "--asha", "--training-seed", "5"])
    fields = study_fields(args, {"space": "mnist-fc-backprop", "resources": {"gpu": 0}})
    assert fields == {"space": "mnist-fc-backprop", "max_trials": 3, "early_stopping": True,
                      "training_seed": 5, "resources": {"gpu": 0, "cpu": 2.0},
                      "objective": {"mode": "max", "metric": "test_error"}}
    assert set(study_options()) >= {"name", "sampler", "seed", "training_seed", "epochs"}
    assert not set(study_options()) & set(SERVER_FIELDS)


def test_a_name_cannot_look_like_a_study_id():
    """GET /studies/{ref} takes a name or an id: a name shaped like an id is refused."""
    import uuid

    with pytest.raises(ValidationError) as info:
        _spec(name=str(uuid.uuid4()))
    error = info.value.errors()[0]
    assert error["loc"] == ("name",) and "study id" in error["msg"]
    assert _spec(name="0a1b2c3d-run").name == "0a1b2c3d-run"
