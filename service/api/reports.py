"""A study's report files: the HTML page and its figures, drawn once from its MLflow
runs when the study has ended (``service.paper.report``) and kept under CREDIT_HOME."""

from __future__ import annotations

import re
from pathlib import Path

from service.api.errors import BackendUnavailable, StudyNotFound, StudyStateConflict
from service.api.principals import ANYONE, Principal
from service.api.queries import get_study
from service.api.services import Services
from service.api.sync import with_parent
from service.paper.report import ReportError, build_report
from service.records import tracking

REPORT_FILES = re.compile(r"^(report\.html|[a-z0-9_]+\.png)$")


def study_report(svc: Services, ref: str, name: str = "report.html",
                 principal: Principal = ANYONE) -> Path:
    """A file of the study's report (the HTML page, or one figure), built once when the
    study has ended. ``BackendUnavailable`` naming MLflow while the service's MLflow
    does not answer."""
    if not REPORT_FILES.match(name):
        raise StudyNotFound(f"no report file {name!r}")
    record = with_parent(svc, get_study(svc, ref, principal))
    if record.status not in ("SUCCEEDED", "FAILED", "CANCELLED"):
        raise StudyStateConflict(f"study {record.name!r} is {record.status}: its report is "
                                 "drawn once it has ended")
    if not record.parent_run_id:
        raise StudyStateConflict(f"study {record.name!r} has no MLflow runs to draw from")
    out = svc.settings.home / "reports" / record.id
    if not (out / "report.html").exists():
        uri = svc.settings.mlflow_tracking_uri  # the live store (the study's may be stale)
        try:
            tracking.client(uri).get_run(record.parent_run_id)
        except Exception as error:
            raise BackendUnavailable(
                f"MLflow ({uri}) does not answer, the report is drawn from its runs: "
                f"{' '.join(str(error).split())[:200]}") from None
        try:
            build_report(record.parent_run_id, uri, out)
        except Exception as error:
            if isinstance(error, ReportError) and _mlflow_answers(uri):
                raise StudyStateConflict(f"study {record.name!r} has no report: {error}") \
                    from None
            raise BackendUnavailable(
                f"MLflow ({uri}) failed while the report was drawn: "
                f"{' '.join(str(error).split())[:200]}") from None
    path = out / name
    if not path.exists():
        raise StudyNotFound(f"study {record.name!r} has no report file {name!r}")
    return path


def _mlflow_answers(uri: str) -> bool:
    try:
        tracking.client(uri).search_experiments(max_results=1)
        return True
    except Exception:
        return False
