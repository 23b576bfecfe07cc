"""Failure reasons kept whole, and sorted into infrastructure and trial failures."""

from __future__ import annotations

import traceback

from service.runner.failures import (
    INFRASTRUCTURE,
    TRIAL,
    failure_kind,
    failure_reason,
    infrastructure_verdict,
    reason_of_exception,
)
from trainables.errors import DivergenceError

STORAGE = ("Unable to set up cluster storage with the following settings:\n"
           "StorageContext<\n  storage_path=/home/u/.credit/ray_results\n>")


def _remote(error: Exception) -> Exception:
    # ray is imported here, not at collection: the session's Ray cluster fixture sets
    # RAY_AUTH_MODE, which Ray reads once, when it is first imported.
    from ray.exceptions import RayTaskError

    try:
        raise error
    except Exception as raised:
        return RayTaskError("ImplicitFunc.train", traceback.format_exc(),
                            raised).as_instanceof_cause()


def test_a_remote_multi_line_message_is_kept_whole_with_its_type():
    reason = reason_of_exception(_remote(RuntimeError(STORAGE)))
    assert reason == f"RuntimeError: {STORAGE}"
    assert failure_kind(reason) == INFRASTRUCTURE


def test_a_traceback_text_gives_its_innermost_exception_whole():
    text = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
            "    f()\nray.exceptions.RayTaskError(RuntimeError): ray::train()\n"
            "  File \"t.py\", line 3\nRuntimeError: " + STORAGE + "\n")
    assert failure_reason(text) == f"RuntimeError: {STORAGE}"


def test_a_dead_actor_is_an_infrastructure_failure():
    from ray.exceptions import ActorUnavailableError

    error = ActorUnavailableError("The actor is temporarily unavailable: RpcError: RPC error: "
                                  "Socket closed rpc_code: 14.", None)
    reason = reason_of_exception(error)
    assert reason.startswith("ActorUnavailableError: ")
    assert failure_kind(reason) == INFRASTRUCTURE
    assert failure_kind("MlflowException: No Experiment with id=1 exists") == INFRASTRUCTURE


def test_divergence_and_bad_values_are_trial_failures():
    reason = reason_of_exception(_remote(DivergenceError(3, "train_loss")))
    assert reason == "DivergenceError: training diverged in epoch 3: train_loss is not finite"
    assert failure_kind(reason) == TRIAL
    assert failure_kind("ValueError: noise_std=-1 must be > 0") == TRIAL
    assert failure_kind(None) is None


def test_infrastructure_failures_beyond_the_budget_fail_the_study():
    failed = {"a": "DivergenceError: training diverged", "b": f"RuntimeError: {STORAGE}"}
    assert infrastructure_verdict({"a": failed["a"]}, None) is None  # divergence: expected
    verdict = infrastructure_verdict(failed, None)
    assert verdict.startswith("1 trials failed for infrastructure reasons")
    assert "Unable to set up cluster storage" in verdict and "\n" not in verdict
    assert infrastructure_verdict(failed, 1) is None
    assert infrastructure_verdict({**failed, "c": failed["b"]}, 1) is not None
