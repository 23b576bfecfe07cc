"""The Pareto front of a study with several objectives: its non-dominated COMPLETE
trials (``GET /studies/{id}/pareto``) and their plot (``GET /studies/{id}/pareto.png``,
the function ``pareto_png`` for the study page). Read from the trials the sync stores
(the study's own: a warm start's are left out), each with its value per objective and
its MLflow run."""

from __future__ import annotations

from typing import Any

from service.api.errors import StudyStateConflict
from service.api.lifecycle import trials_record
from service.api.principals import ANYONE, Principal
from service.api.queries import each_trial, is_final
from service.api.services import Services
from service.records.study_plots import pareto_figure, png
from service.trials import pareto_front


def _front(svc: Services, ref: str, principal: Principal):
    record = trials_record(svc, ref, principal)
    spec = svc.spec_of(record)
    if not spec.multi_objective:
        raise StudyStateConflict(
            f"study {record.name!r} has one objective ({spec.objective.metric}): its best "
            f"configuration is GET /studies/{record.id}/best")
    metrics = [o.metric for o in spec.objectives]
    complete = [t for t in each_trial(svc, record)
                if t["state"] == "COMPLETE" and t.get("values")
                and all(t["values"].get(m) is not None for m in metrics)]
    points = [[t["values"][m] for m in metrics] for t in complete]
    front = [complete[i] for i in pareto_front(points, [o.mode for o in spec.objectives])]
    return record, spec, complete, front


def pareto_of(svc: Services, ref: str, principal: Principal = ANYONE) -> dict[str, Any]:
    """The study's Pareto front so far (final once it has ended): each trial's number,
    Tune id, parameters, value per objective and MLflow run. ``StudyStateConflict`` for a
    study with one objective (its answer is its best)."""
    record, spec, complete, front = _front(svc, ref, principal)
    data = [{"number": t["number"], "trial_id": t["trial_id"], "params": t["params"],
             "values": t["values"], "mlflow_run_id": t.get("mlflow_run_id"),
             "mlflow_url": svc.mlflow_link(record.experiment_id, t.get("mlflow_run_id"))}
            for t in front]
    return {"study_id": record.id, "status": record.status, "final": is_final(record),
            "objectives": [o.model_dump() for o in spec.objectives],
            "complete_trials": len(complete), "data": data, "count": len(data)}


def pareto_png(svc: Services, ref: str, principal: Principal = ANYONE) -> bytes:
    """The Pareto plot of the study (every COMPLETE trial, the front marked), as PNG."""
    record, spec, complete, front = _front(svc, ref, principal)
    fig = pareto_figure(record.name, [o.model_dump() for o in spec.objectives],
                        [t["values"] for t in complete], [t["values"] for t in front])
    return png(fig)
