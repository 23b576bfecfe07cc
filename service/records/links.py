"""Links into the MLflow UI (and the Optuna dashboard) that land where a user wants.

MLflow 3.17's UI opens an experiment on its GenAI "Traces" overview; the runs table is
``#/experiments/<id>/runs``. Its URL can filter (``searchFilter``) and sort
(``orderByKey``, ``orderByAsc``) but not choose columns: by default they are Run Name,
Created, Duration, Source, Models, Dataset, no metric and no parameter. What can choose
them is a *shared view* (the UI's "Share" button): an experiment tag
``mlflow.sharedViewState.<key>`` holding the view as JSON (search facets and UI state,
``selectedColumns`` among them), opened by ``#/experiments/<id>/runs?viewStateShareKey=<key>``
(read in the UI's bundle, ``static/js``: the URL may carry no facet beside the key, or
the view is ignored). Each study's runner saves its view (``study_view``) as it opens
its parent run: the study's runs only (parent, trials, final seeds, listed flat), best
objective first, with columns for each objective, each searched parameter, and the
run's role and state. A single run's page is ``#/experiments/<id>/runs/<run_id>``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from service.records import tags


def study_filter(study: str) -> str:
    """The MLflow search filter of a study's runs (parent, trials, final seeds)."""
    return f"tags.`{tags.STUDY}` = '{study}'"


def view_key(study: str) -> str:
    """The key of study ``study``'s shared view (its tag: ``tags.SHARED_VIEW_PREFIX`` + key)."""
    return f"credit-{study}"


def study_view(study: str, objectives: list[dict[str, str]], params: list[str]
               ) -> dict[str, Any]:
    """The runs table of the study as MLflow's UI stores a shared view: its runs, the first
    objective best first, a column per objective, searched parameter, role and state."""
    first = objectives[0]
    return {"searchFilter": study_filter(study),
            "orderByKey": f"metrics.`{first['metric']}`",
            "orderByAsc": first.get("mode", "min") == "min",
            "selectedColumns": [*(f"metrics.`{o['metric']}`" for o in objectives),
                                *(f"params.`{p}`" for p in params),
                                f"tags.`{tags.ROLE}`", f"tags.`{tags.STATE}`"]}


def mlflow_runs(base: str | None, experiment_id: str | None, study: str) -> str | None:
    """The runs table of ``experiment_id`` in study ``study``'s shared view."""
    if not base or not experiment_id:
        return None
    query = urlencode({"viewStateShareKey": view_key(study)}, quote_via=quote, safe="")
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
