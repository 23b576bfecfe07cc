"""The study page and the comparison as the views render them from stored rows (the
service's real database, Optuna storage and MLflow store in sqlite; no HTTP, no
browser): what they say of a study with several objectives, which has no single best.
The same pages over HTTP in Chromium, with real studies: ``test_pages_study.py``."""

from __future__ import annotations

import datetime as dt
import html
import re

import pytest

from service.api import validation
from service.api.config import ApiSettings
from service.api.principals import ANYONE
from service.api.schemas import StudyCreate
from service.api.services import Services
from service.api.views import render
from service.api.views.study import compare_context, study_context
from service.jobs import NodeResources, RayJobs
from service.records import db

SPACE = "mnist-fc-node-perturbation"
TWO = [{"metric": "test_error", "mode": "min"}, {"metric": "angle/fc2", "mode": "min"}]
# trial number → (test_error, angle/fc2): 0 and 1 are the front, 2 is beaten by 0
VALUES = {0: (0.10, 40.0), 1: (0.30, 20.0), 2: (0.20, 50.0)}


class NodesOnly(RayJobs):
    """A cluster that lists its nodes (for the checks of a submission) and runs nothing."""

    def __init__(self):
        super().__init__("http://127.0.0.1:9")

    def nodes(self):
        return [NodeResources("node", True, {"CPU": 2.0})]


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """The service's stores, once for the module (each test its own studies)."""
    home = tmp_path_factory.mktemp("pages-views")
    settings = ApiSettings(home=home, api_tokens="t",
                           mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    svc = Services.from_settings(settings)
    svc.jobs = NodesOnly()
    svc.prepare()
    yield svc
    svc.db.dispose()


def _trial(number: int, values: dict[str, float] | None, lr: float) -> dict:
    return {"number": number, "trial_id": f"t_{number:05d}",
            "state": "COMPLETE" if values else "RUNNING",
            "params": {"lr": lr, "noise_std": 0.01, "feedback_lr": 0.001},
            "value": None if values is None else values[TWO[0]["metric"]], "values": values,
            "restarts": 0, "mlflow_run_id": None}


def _study(svc: Services, name: str, trials: list[dict], objectives=None,
           best: dict | None = None, status: str = db.SUCCEEDED) -> str:
    """A study row as the sync leaves it: its spec, counts, best and trials."""
    body = StudyCreate(name=name, space=SPACE, max_trials=4, sampler="tpe",
                       **({"objectives": objectives} if objectives else {}))
    spec = validation.build_spec(svc, body)
    complete = sum(t["state"] == "COMPLETE" for t in trials)
    counts = {"pending": 0, "running": len(trials) - complete, "complete": complete,
              "failed": 0, "pruned": 0}
    with svc.db.session() as session:
        db.create_study(session, db.StudyRecord(
            id=f"{name}-id", name=name, status=status, job_id=f"credit-{name}",
            spec=spec.model_dump(mode="json"), message="", trials=trials,
            progress={"counts": counts, "best": best, "restarts": 0},
            created_at=db.utcnow() - dt.timedelta(seconds=5)))
    return f"{name}-id"


def _text(page: str, element_id: str) -> str:
    """The text of the element ``id="element_id"`` of ``page``, tags removed, spaces one."""
    found = re.search(rf'<(\w+)[^>]* id="{re.escape(element_id)}"[^>]*>(.*?)</\1>', page,
                      re.S)
    assert found, f"no #{element_id} in the page"
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", found.group(2))).split())


def test_a_study_of_two_objectives_says_where_its_results_are(services) -> None:
    trials = [_trial(n, dict(zip(("test_error", "angle/fc2"), v, strict=True)), 0.01 * (n + 1))
              for n, v in VALUES.items()]
    ref = _study(services, "two-goals", trials, objectives=TWO)
    page = render("study.html", **study_context(services, ref, ANYONE))
    best = _text(page, "best")
    assert "no complete trial yet" not in page
    assert "2 objectives, test_error (min), angle/fc2 (min): no single best" in best, best
    assert "Pareto front" in best and "2 of the 3 complete trials" in best, best
    assert f"GET /studies/{ref}/pareto" in best, best
    assert 'href="#pareto"' in page and '<section id="pareto">' in page
    assert f'href="/studies/{ref}/pareto"' in page
    # the trials' table has a column per objective
    heads = re.search(r'<table id="trials"><thead>(.*?)</thead>', page, re.S).group(1)
    assert "<th>test_error</th>" in heads and "<th>angle/fc2</th>" in heads
    assert 'id="best-value"' not in page  # no single best value anywhere


def test_a_study_of_two_objectives_without_a_complete_trial_says_so(services) -> None:
    ref = _study(services, "two-goals-early", [_trial(0, None, 0.01)], objectives=TWO,
                 status=db.RUNNING)
    page = render("study.html", **study_context(services, ref, ANYONE))
    assert _text(page, "best") == "no complete trial yet"


def test_a_study_of_one_objective_shows_its_best(services) -> None:
    trials = [_trial(0, {"test_error": 0.25}, 0.01), _trial(1, {"test_error": 0.125}, 0.02)]
    best = {"value": 0.125, "params": trials[1]["params"], "trial_id": "t_00001",
            "number": 1, "run_id": None}
    ref = _study(services, "one-goal", trials, best=best)
    page = render("study.html", **study_context(services, ref, ANYONE))
    assert _text(page, "best").startswith("best test_error (min): 0.125 with")
    assert '<section id="pareto">' not in page and "no single best" not in page


def test_compare_shows_every_objective_and_no_single_best_of_two(services) -> None:
    trials = [_trial(n, dict(zip(("test_error", "angle/fc2"), v, strict=True)), 0.01 * (n + 1))
              for n, v in VALUES.items()]
    several = _study(services, "cmp-two", trials, objectives=TWO)
    one = [_trial(0, {"test_error": 0.25}, 0.01)]
    single = _study(services, "cmp-one", one,
                    best={"value": 0.25, "params": one[0]["params"], "trial_id": "t_00000",
                          "number": 0, "run_id": None})
    page = render("compare.html", **compare_context(services, [several, single], ANYONE))
    objectives = [" ".join(html.unescape(m).split())
                  for m in re.findall(r'<td class="objective">(.*?)</td>', page, re.S)]
    assert objectives == ["test_error (min), angle/fc2 (min)", "test_error (min)"]
    cells = [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", m)).split()) for m in
             re.findall(r'<td class="[^"]*best-value">(.*?)</td>', page, re.S)]
    assert cells == ["no single best: Pareto front of 2 trials", "0.25"], cells
    assert f'href="/?study={several}#pareto"' in page
    # its curve is one objective's, and the legend says so
    assert "(its curve: test_error alone, the first of 2 objectives)" in page
    # no parameter of a "best configuration" for the study of two objectives
    lr = re.search(r"<tr><th>lr</th>(.*?)</tr>", page, re.S).group(1)
    assert re.findall(r'<td class="num">(.*?)</td>', lr) == ["-", "0.01"]


def test_the_list_of_studies_names_every_objective(services) -> None:
    from service.api.routes.pages import studies_fragment

    trials = [_trial(0, {"test_error": 0.1, "angle/fc2": 40.0}, 0.01)]
    _study(services, "listed-two", trials, objectives=TWO)
    _study(services, "listed-one", [_trial(0, {"test_error": 0.25}, 0.01)])
    page = studies_fragment(services, ANYONE).body.decode()
    rows = {m.group(1): m.group(0) for m in re.finditer(
        r'<tr><td><input[^>]*aria-label="compare ([^"]+)">.*?</tr>', page, re.S)}
    assert "<td>test_error (min), angle/fc2 (min)</td>" in rows["listed-two"]
    assert "<td>test_error (min)</td>" in rows["listed-one"]
