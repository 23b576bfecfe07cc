"""Links into the MLflow UI (and the Optuna dashboard) that land where a user wants.

MLflow 3.17's UI opens an experiment on its GenAI "Traces" overview; the runs table is
``#/experiments/<id>/runs``. With a ``searchFilter`` on the study's tag the table lists
the study's parent run and every trial run flat (the UI nests child runs only when no
filter is set), ordered by the objective, best first. A single run's page is
``#/experiments/<id>/runs/<run_id>``.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from service.records import tags


def study_filter(study: str) -> str:
    """The MLflow search filter of a study's runs (parent, trials, final seeds)."""
    return f"tags.`{tags.STUDY}` = '{study}'"


def mlflow_runs(base: str | None, experiment_id: str | None, study: str,
                metric: str | None = None, mode: str = "min") -> str | None:
    """The runs table of ``experiment_id`` filtered to ``study``, best ``metric`` first."""
    if not base or not experiment_id:
        return None
    params = {"searchFilter": study_filter(study)}
    if metric:
        params["orderByKey"] = f"metrics.`{metric}`"
        params["orderByAsc"] = "true" if mode == "min" else "false"
    query = urlencode(params, quote_via=quote, safe="")
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def mlflow_run(base: str | None, experiment_id: str | None, run_id: str | None) -> str | None:
    """One run's page."""
    if not base or not experiment_id or not run_id:
        return None
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def optuna_study(base: str | None, study_id: int | None) -> str | None:
    """The Optuna dashboard's page of a study (by Optuna's own study id)."""
    if not base or study_id is None:
        return None
    return f"{base.rstrip('/')}/dashboard/studies/{study_id}"
