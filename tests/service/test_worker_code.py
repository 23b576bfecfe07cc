"""The code a study's driver hands Ray's workers by name (``service.runner.worker_code``)."""

from __future__ import annotations

import pickle

import cloudpickle
import pytest

from service.runner.worker_code import TRAIN_POPULATION, TRAIN_TRIAL, WorkerCode


def test_it_travels_as_its_name_and_imports_its_module_where_it_is_called():
    code = WorkerCode("json:dumps")
    copy = pickle.loads(cloudpickle.dumps(code))  # as Ray ships a trainable to a worker
    assert isinstance(copy, WorkerCode) and copy.target == "json:dumps"
    assert copy({"a": 1}) == '{"a": 1}'


def test_tune_names_the_trainables_as_before():
    """Tune names a trial's trainable after ``__name__`` and checks it when a study
    resumes: a study saved when the driver held the functions themselves resumes."""
    assert (TRAIN_TRIAL.__name__, TRAIN_POPULATION.__name__) == ("train_trial",
                                                                 "train_population")


def test_a_bad_name_or_new_state_is_refused():
    with pytest.raises(ValueError, match="target="):
        WorkerCode("trainables.tune")
    with pytest.raises(AttributeError):  # tune.with_resources must not mark the shared one
        TRAIN_TRIAL._resources = {"CPU": 1}
