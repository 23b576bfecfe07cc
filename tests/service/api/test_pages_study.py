"""The study page, the comparison of studies and the study's view in MLflow's UI, in
headless Chromium against the real servers (uvicorn, MLflow) with real finished studies:
the numbers on screen are the service's, the plots have a point per trial, a running
study's page updates itself without a reload, and the MLflow link shows the objective
and the searched parameters as columns. Screenshots go to ``$CREDIT_SCREENSHOT_DIR``
(default: the test's tmp dir)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from service.records import series
from service.text import mean_sem, number
from tests.service.api.browser import Browser
from tests.service.api.helpers import TINY, TOKEN, wait_status

SPACE = "mnist-fc-node-perturbation"  # lr, noise_std, feedback_lr: all log


def shots(tmp_path: Path) -> Path:
    return Path(os.environ.get("CREDIT_SCREENSHOT_DIR", tmp_path))


@pytest.fixture(scope="module")
def two_studies(api):
    """Two finished studies: ``page-a`` (4 trials, 2 final seeds) and ``page-b``."""
    with api.client() as c:
        for name, trials, extra in (("page-a", 4, {"final_seeds": 2}),
                                    ("page-b", 3, {"sampler": "tpe", "seed": 1})):
            r = c.post("/studies", json={"name": name, "space": SPACE, "max_trials": trials,
                                         "parallel_trials": 2, **TINY, **extra})
            assert r.status_code == 201, r.text
        done = {name: wait_status(c, name, ("SUCCEEDED", "FAILED"), timeout_s=400)
                for name in ("page-a", "page-b")}
        trials = {name: c.get(f"/studies/{name}/trials").json()["data"] for name in done}
        best = {name: c.get(f"/studies/{name}/best").json() for name in done}
    assert {d["status"] for d in done.values()} == {"SUCCEEDED"}, done
    return done, trials, best


def page(api, query: str) -> str:
    return f"{api.url}{query}#token={TOKEN}"


def test_study_page_shows_the_search(api, two_studies, tmp_path) -> None:
    done, trials, best = two_studies
    complete = [t for t in trials["page-a"] if t["state"] == "COMPLETE"]
    with Browser(1280, 1500) as b:
        b.open(page(api, "/?study=page-a"))
        b.wait_for("!!document.getElementById('best-value')")
        shot = b.screenshot(shots(tmp_path) / "credit-study-page.png")
        seen = b.js("""({
          best: document.getElementById('best-value').textContent,
          final: document.getElementById('final-value').textContent,
          trials: document.querySelectorAll('#best-so-far circle').length,
          stairs: document.querySelectorAll('#best-so-far .best path').length,
          params: [...document.querySelectorAll('svg[id^=param-]')].map(s => [s.id,
                   s.querySelectorAll('circle').length]),
          lrTicks: [...document.querySelectorAll('#param-lr .tick.x')].map(t => t.textContent),
          rows: document.querySelectorAll('#trials tbody tr').length,
          live: document.querySelector('[data-refresh]') !== null,
          loads: document.getElementById('main').dataset.loads})""")
    assert seen["best"] == number(done["page-a"]["best"]["value"]) == \
        number(min(t["value"] for t in complete))
    final = best["page-a"]["final_evaluation"]
    assert final["final_seeds"] == 2
    assert seen["final"] == mean_sem(final["final/test_error_mean"],
                                     final["final/test_error_sem"], ".4g")
    assert seen["trials"] == len(complete) == 4 and seen["stairs"] == 1
    assert sorted(seen["params"]) == [["param-feedback_lr", 4], ["param-lr", 4],
                                      ["param-noise_std", 4]]
    # lr is log-uniform on [3e-4, 0.3]: the axis is in decades
    assert seen["lrTicks"] == ["0.001", "0.01", "0.1"], seen["lrTicks"]
    assert seen["rows"] == 4 and not seen["live"]  # ended: no refresh asked for
    assert shot.stat().st_size > 20_000


def test_compare_view_overlays_the_curves(api, two_studies, tmp_path) -> None:
    done, trials, _ = two_studies
    ids = ",".join(done[n]["id"] for n in ("page-a", "page-b"))
    with Browser(1280, 1100) as b:
        b.open(page(api, "/"))
        b.wait_for("document.querySelectorAll('input.pick').length >= 2")
        disabled = b.js("document.getElementById('compare').disabled")
        for study in ("page-a", "page-b"):  # tick the two studies, press compare
            b.js(f"document.querySelector('input.pick[value=\"{done[study]['id']}\"]').click()")
        b.js("document.getElementById('compare').click()")
        b.wait_for("!!document.getElementById('best-configs')")
        url = b.js("location.pathname + location.search")
        b.screenshot(shots(tmp_path) / "credit-compare.png")
        seen = b.js("""({
          curves: [...document.querySelectorAll('#compare-best-so-far g.series')].map(g =>
                   [g.dataset.name, g.querySelectorAll('circle').length,
                    g.querySelectorAll('path').length]),
          heads: [...document.querySelectorAll('#best-configs thead th')].map(t => t.textContent),
          best: [...document.querySelectorAll('#best-configs .best-value')].map(t =>
                 t.textContent),
          rows: [...document.querySelectorAll('#best-configs tbody th')]
                 .map(t => t.textContent)})""")
    assert disabled and url == f"/ui/compare?ids={ids}"
    n = {s: len([t for t in trials[s] if t["state"] == "COMPLETE"]) for s in done}
    assert seen["curves"] == [["page-a", n["page-a"], 1], ["page-b", n["page-b"], 1]]
    assert seen["heads"][1:] == ["page-a", "page-b"]
    assert seen["best"] == [number(done[s]["best"]["value"]) for s in ("page-a", "page-b")]
    assert {"lr", "noise_std", "feedback_lr", "best value"} <= set(seen["rows"])


def test_compare_names_the_field_of_bad_ids(api, two_studies) -> None:
    done, _, _ = two_studies
    a, b = done["page-a"]["id"], done["page-b"]["id"]
    cases = {"": 422, a: 422, ",".join([a, b, "page-a", "x", "y"]): 422, f"{a},{a}": 422,
             f"{a},page-a": 422, f"{a},no-such-study": 404, f"{a},b@d": 422}
    with api.client() as c:
        for ids, status in cases.items():
            r = c.get("/pages/compare", params={"ids": ids})
            assert r.status_code == status, (ids, r.text)
            assert r.json()["detail"][0]["loc"] == ["query", "ids"], r.text
        assert "no-such-study" in c.get("/pages/compare",
                                        params={"ids": f"{a},no-such-study"}).text
        assert c.get("/pages/compare", params={"ids": f"{a},{b}"},
                     headers={"Authorization": "Bearer wrong"}).status_code in (401, 403)
    with Browser() as b:  # the page shows the reason, naming the field
        b.open(page(api, f"/ui/compare?ids={a}"))
        text = b.wait_for("document.getElementById('error')?.textContent")
    assert text.startswith("query.ids: give 2 to 4 studies"), text


@pytest.mark.slow
def test_running_study_page_updates_without_reload(api, tmp_path) -> None:
    # trials of a few seconds each (TINY's take ~1 s: the study could end between the
    # page's 2-second refreshes, or before the page first showed it)
    with api.client() as c:
        r = c.post("/studies", json={"name": "page-live", "space": SPACE, "max_trials": 6,
                                     "parallel_trials": 1,
                                     **{**TINY, "epochs": 4, "batches_per_epoch": 40}})
        assert r.status_code == 201, r.text
        wait_status(c, "page-live", ("RUNNING",), timeout_s=200)
        with Browser(1280, 1300) as b:
            b.open(page(api, "/?study=page-live"))
            b.wait_for("!!document.getElementById('n-complete')")
            b.js("window.probe = 'same page'")
            first = int(b.js("document.getElementById('n-complete').textContent"))
            later = int(b.wait_for(f"""(() => {{
                const n = Number(document.getElementById('n-complete').textContent);
                return n > {first} && n < 6 ? n : 0; }})()""", timeout_s=300, every_s=0.2))
            b.screenshot(shots(tmp_path) / "credit-study-live.png")
            middle = b.js("""({status: document.getElementById('study').dataset.status,
              live: document.querySelector('[data-refresh]') !== null,
              points: document.querySelectorAll('#best-so-far circle').length,
              probe: window.probe})""")
            b.wait_for("document.getElementById('study')?.dataset.status === 'SUCCEEDED'",
                       timeout_s=300)
            loads = int(b.js("document.getElementById('main').dataset.loads"))
            time.sleep(5)  # ended: no more fetches
            after = b.js("""({loads: Number(document.getElementById('main').dataset.loads),
              points: document.querySelectorAll('#best-so-far circle').length,
              probe: window.probe})""")
    assert middle == {"status": "RUNNING", "live": True, "points": later,
                      "probe": "same page"}, middle
    assert later > first and after["probe"] == "same page" and loads >= 3
    assert after["loads"] == loads and after["points"] == 6


@pytest.mark.slow
def test_mlflow_link_shows_objective_and_params(api, two_studies, mlflow_server,
                                                tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    done, trials, _ = two_studies
    study = done["page-a"]
    with Browser(1920, 1000) as b:
        b.open(study["links"]["mlflow"], settle_s=3)
        heads = b.wait_for("""(() => {
            const h = [...document.querySelectorAll('[role=columnheader]')]
                      .map(e => e.textContent.trim());
            return h.includes('test_error') && h.includes('feedback_lr') ? h : null; })()""",
                           timeout_s=60)
        b.screenshot(shots(tmp_path) / "credit-mlflow-runs.png", full_page=False)
        names = b.js("[...document.querySelectorAll('a')].map(a => a.textContent)"
                     ".filter(t => t.startsWith('page-a/'))")
        values = b.js("[...document.querySelectorAll('.ag-row')].map(r => r.textContent)")
        b.open(f"{study['links']['mlflow_parent_run']}/artifacts/study/best_so_far.png",
               settle_s=4)
        b.screenshot(shots(tmp_path) / "credit-mlflow-parent-artifacts.png", full_page=False)
        files = b.js("document.body.innerText")
    assert {"test_error", "lr", "noise_std", "feedback_lr", "credit.role",
            "credit.state"} <= set(heads), heads
    trial_names = [n for n in names if "/trial-" in n]
    assert len(trial_names) == 4, names
    best = number(study["best"]["value"], ".4g")
    assert any(best[:4] in row for row in values), values  # the best value shows in a row
    assert "trials.html" in files and "objective_vs_params.png" in files, files[:2000]
    # the table artifact itself: every trial, the best value
    c = MlflowClient(mlflow_server)
    html = Path(c.download_artifacts(study["mlflow_parent_run_id"], "study/trials.html",
                                     str(tmp_path))).read_text()
    assert html.count('class="COMPLETE"') == 4 and number(study["best"]["value"]) in html
    assert "over 2 final seeds" in html
    assert series.final_seeds({}, "test_error") is None


def test_study_link_opens_the_shared_view(two_studies, mlflow_server) -> None:
    from mlflow.tracking import MlflowClient

    study = two_studies[0]["page-b"]
    assert study["links"]["mlflow"].endswith("/runs?viewStateShareKey=credit-page-b")
    exp = MlflowClient(mlflow_server).get_experiment(study["mlflow_experiment_id"])
    view = json.loads(exp.tags["mlflow.sharedViewState.credit-page-b"])
    assert view["orderByKey"] == "metrics.`test_error`" and view["orderByAsc"] is True
    assert view["selectedColumns"][:4] == ["metrics.`test_error`", "params.`lr`",
                                           "params.`noise_std`", "params.`feedback_lr`"]
    arts = {f.path for f in MlflowClient(mlflow_server).list_artifacts(
        study["mlflow_parent_run_id"], "study")}
    assert arts == {"study/trials.html", "study/best_so_far.png",
                    "study/objective_vs_params.png"}
