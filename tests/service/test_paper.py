"""Paper campaigns and their reports, on real Ray, MLflow and Optuna (tiny budgets)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from service.paper import figures as F
from service.paper import report as R
from service.paper.arms import arms_of
from service.records import tags
from service.records import tracking as T
from service.spec import StudySpec
from trainables.errors import ConfigError


def run_study(*args, **kwargs):
    """``run_study``, imported once the session's Ray cluster has set its auth token
    (Ray reads it when it is imported)."""
    from service.runner.study import run_study as run

    return run(*args, **kwargs)


def run_campaign(*args, **kwargs):
    from service.paper.campaign import run_campaign as run

    return run(*args, **kwargs)

TINY = dict(trials=2, seeds=2, epochs=2, batches_per_epoch=10, dataset="mnist-5k",
            parallel_trials=2)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper")
    return {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
            "storage": f"sqlite:///{tmp / 'optuna.db'}", "dir": tmp}


@pytest.fixture(scope="module")
def fc_campaign(ray_cluster, stores):
    result = run_campaign("mnist-fc", noise_levels=[0.01], only=["np-c0.01", "fa", "bp"],
                          name="fc-campaign", tracking_uri=stores["tracking_uri"],
                          storage=stores["storage"], **TINY)
    report = R.build_report(result.run_id, stores["tracking_uri"], stores["dir"] / "fc")
    return result, report


@pytest.fixture(scope="module")
def ae_campaign(ray_cluster, stores):
    result = run_campaign("mnist-autoencoder", only=["np", "fa"], name="ae-campaign",
                          tracking_uri=stores["tracking_uri"], storage=stores["storage"],
                          **TINY)
    report = R.build_report(result.run_id, stores["tracking_uri"], stores["dir"] / "ae")
    return result, report


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG and path.stat().st_size > 5000


def test_fig1_has_the_papers_panels(fc_campaign, stores):
    result, report = fc_campaign
    assert set(report.figures) == {"fig1.png"} and _is_png(report.figures["fig1.png"])
    _, _, arms = R.collect_arms(result.run_id, stores["tracking_uri"])
    assert [a.key for a in arms] == ["np-c0.01", "fa", "bp"]
    assert all(a.status == "ok" and a.n == 2 for a in arms)
    fig = F.figure1(arms)
    axes = fig.axes
    assert [ax.get_title(loc="left")[0] for ax in axes] == ["A", "B", "C", "D"]
    assert all(ax.get_xlabel() == "epoch" for ax in axes)
    assert axes[3].get_ylabel() == "test error (%)"
    assert axes[1].get_ylim() == (0, 180)
    legend_a = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert "node perturbation, c = 0.01" in legend_a and "layer fc2" in legend_a
    assert "backprop" not in legend_a  # exact by construction: not in panels A-C
    legend_d = [t.get_text() for t in axes[3].get_legend().get_texts()]
    assert legend_d == ["node perturbation, c = 0.01 (n=2)", "feedback alignment (n=2)",
                        "backprop (n=2)"]
    # panel D's curves are the seed means of MLflow's test_error history, in %
    client = MlflowClient(stores["tracking_uri"])
    bp = arms[2]
    histories = [[m.value for m in sorted(client.get_metric_history(r.info.run_id,
                                                                    "test_error"),
                                         key=lambda m: m.step)] for r in bp.runs]
    line = [ln for ln in axes[3].get_lines() if ln.get_color() is not None][2]
    np.testing.assert_allclose(line.get_ydata(), 100 * np.mean(histories, axis=0))


def test_table_numbers_equal_mlflow_metrics(fc_campaign, stores):
    result, report = fc_campaign
    client = MlflowClient(stores["tracking_uri"])
    for row, arm in zip(report.table, report.arms, strict=True):
        finals = [client.get_run(r.info.run_id).data.metrics["test_error"] for r in arm.runs]
        assert row["values"] == pytest.approx([100 * v for v in finals])
        assert row["mean"] == pytest.approx(100 * float(np.mean(finals)))
        sem = float(np.std(finals, ddof=1) / math.sqrt(len(finals)))
        assert row["sem"] == pytest.approx(100 * sem)
    assert [r["paper"] for r in report.table] == ["3.6 %", "4.3 %", "2.65 %"]
    md = (report.html.parent / "table.md").read_text()
    assert "| feedback alignment | 2 |" in md


def test_html_references_every_figure_and_is_logged(fc_campaign, stores):
    result, report = fc_campaign
    page = report.html.read_text()
    for name in report.figures:
        assert f'alt="{name}"' in page
    assert page.count("data:image/png;base64,") == len(report.figures)
    arts = {a.path for a in MlflowClient(stores["tracking_uri"]).list_artifacts(
        result.run_id, "report")}
    assert {"report/fig1.png", "report/report.html", "report/table.md"} <= arts


def test_studies_nest_under_the_campaign(fc_campaign, stores):
    result, _ = fc_campaign
    client = MlflowClient(stores["tracking_uri"])
    campaign = client.get_run(result.run_id)
    assert campaign.data.tags[tags.ROLE] == "campaign" and campaign.info.status == "FINISHED"
    studies = T.child_runs(stores["tracking_uri"], campaign.info.experiment_id, result.run_id)
    assert sorted(s.data.tags["credit.arm"] for s in studies) == ["bp", "fa", "np-c0.01"]
    np_study = next(s for s in studies if s.data.tags["credit.arm"] == "np-c0.01")
    assert float(np_study.data.params.get("dataset") is not None)
    trials = T.child_runs(stores["tracking_uri"], campaign.info.experiment_id,
                          np_study.info.run_id)
    assert {float(t.data.params["noise_std"]) for t in trials} == {0.01}  # c fixed
    assert campaign.data.metrics["bp/test_error_mean"] == pytest.approx(
        report_mean(result, "bp"))


def report_mean(result, key):
    return result.studies[key].final["final/test_error_mean"]


@pytest.mark.slow  # ~30 s: out of the default run (15-minute aim), CI runs it
def test_fig2_has_losses_codes_and_reconstructions(ae_campaign, stores):
    result, report = ae_campaign
    assert set(report.figures) == {"fig2.png", "fig2_latent.png", "fig2_reconstructions.png"}
    assert all(_is_png(p) for p in report.figures.values())
    _, _, arms = R.collect_arms(result.run_id, stores["tracking_uri"])
    fig = F.figure2(arms)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "epoch" and "loss" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "node perturbation (n=2)", "feedback alignment (n=2)"]
    styles = [ln.get_linestyle() for ln in ax.get_lines()]
    assert styles.count("--") == 2 and styles.count("-") == 2  # train dashed, test solid
    latent = F.figure2_latent(arms)
    assert [a.get_title() for a in latent.axes[:2]] == ["node perturbation",
                                                         "feedback alignment"]
    assert all(a.get_xlabel() == "code 1" for a in latent.axes[:2])
    assert len(latent.axes[0].collections[0].get_offsets()) == len(arms[0].artifacts["codes"])
    recon = F.figure2_reconstructions(arms)
    assert len(recon.axes) == 3 * 8  # originals + one row per rule
    row = report.table[0]
    client = MlflowClient(stores["tracking_uri"])
    mins = [32 * min(m.value for m in client.get_metric_history(r.info.run_id, "test_loss"))
            for r in arms[0].runs]
    assert row["mean"] == pytest.approx(float(np.mean(mins)))
    assert row["paper"] == "515 ± 4"


def test_report_marks_failed_and_missing_arms(ray_cluster, stores):
    c = T.client(stores["tracking_uri"])
    exp = T.ensure_experiment(stores["tracking_uri"], "credit-search", None)
    campaign = c.create_run(exp, run_name="broken", tags={
        tags.ROLE: "campaign", "credit.experiment": "mnist-fc", "credit.arms": "bp,fa,np"})
    cid = campaign.info.run_id
    # bp runs fine; fa always diverges; np was never run
    for key, space in (("bp", "mnist-fc-backprop"),
                       ("fa", {"name": "always-diverges", "experiment": "mnist-fc",
                               "rule": "feedback_alignment",
                               "params": {"lr": {"type": "categorical", "choices": [1e4]}}})):
        spec = StudySpec(name=f"broken-{key}", space=space, max_trials=1, epochs=1,
                         batches_per_epoch=5, dataset="mnist-5k", final_seeds=0,
                         group_run_id=cid, labels={"arm": key},
                         tracking_uri=stores["tracking_uri"], storage=stores["storage"])
        run_study(spec)
    c.set_terminated(cid)
    report = R.build_report(cid, stores["tracking_uri"], stores["dir"] / "broken")
    status = {r["arm"]: r["status"] for r in report.table}
    assert status == {"bp": "ok", "fa": "failed", "np": "missing"}
    assert _is_png(report.figures["fig1.png"])
    page = report.html.read_text()
    assert "failed" in page and "missing" in page
    md = (report.html.parent / "table.md").read_text()
    assert "*failed*" in md and "*missing*" in md


def test_arms_and_cli_errors(tmp_path):
    with pytest.raises(ConfigError, match="valid: np, np-c0.0001"):
        arms_of("mnist-fc", None, ["nope"])
    with pytest.raises(ConfigError, match="mnist-fc only"):
        arms_of("mnist-autoencoder", [0.1])
    assert [a.key for a in arms_of("mnist-fc", [])] == ["np", "fa", "bp"]
    for args in (["paper", "mnist-cnn"], ["paper", "mnist-fc", "--trials", "0"],
                 ["paper", "mnist-fc", "--noise-levels", "-1"],
                 ["paper", "mnist-fc", "--arms", "xx"],
                 ["report", "0123456789abcdef0123456789abcdef",
                  "--tracking-uri", f"sqlite:///{tmp_path / 'x.db'}"]):
        p = subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 2, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


# ------------------------------------------------------------ authors' and fair protocols
def test_protocol_arms_and_their_spaces():
    from service.paper.arms import (
        AUTHORS_AUTOENCODER_ARMS,
        fixed_arm_space,
        protocol_arms,
    )

    authors = protocol_arms("mnist-autoencoder", "authors", None, None)
    assert [a.key for a in authors] == ["np-50", "bp-200", "adam-200", "matched-50", "fa-200",
                                        "sg-50"]
    np50 = authors[0]
    assert np50.reference == 515.30 and "AENPModel5" in np50.source
    space = fixed_arm_space(np50)
    cfg = space.trial_config({"lr": 1e-4}, epochs=3, batches_per_epoch=5)
    assert (cfg.hidden_width, cfg.output_activation, cfg.init, cfg.loss_reduction,
            cfg.momentum, cfg.noise_std, cfg.feedback_lr, cfg.step_test_images) == \
        (50, "relu", "authors", "sum", 0.0, 0.018942, 8e-6, 32)
    assert space.objective.metric == "step_test_loss"
    assert {a.config["hidden_width"] for a in AUTHORS_AUTOENCODER_ARMS
            if a.key.endswith("-200")} == {200}
    assert next(a for a in authors if a.key == "matched-50").config["epochs"] == 350
    fair = protocol_arms("mnist-autoencoder", "fair", None, None)
    assert len(fair) == 12 and {a.key for a in fair} >= {"np-50", "sg-200", "adam-50", "fa-200"}
    from service.paper.arms import arm_space

    s = arm_space(next(a for a in fair if a.key == "sg-50"))
    assert s.rule == "synthetic_gradient" and s.fixed["hidden_width"] == 50
    assert s.fixed["output_activation"] == "relu" and "hidden_width" not in s.params
    assert [a.key for a in protocol_arms("mnist-fc", "authors", None, None)] == ["fa-fc"]
    for bad, match in ((("cifar10-cnn", "authors", None, None), "no recorded settings"),
                       (("mnist-fc", "fair", None, None), "mnist-autoencoder"),
                       (("mnist-autoencoder", "authors", None, ["np"]), "'np'.*np-50"),
                       (("mnist-autoencoder", "fair", [0.1], None), "noise-levels"),
                       (("mnist-autoencoder", "theirs", None, None), "ours, authors, fair")):
        with pytest.raises(ConfigError, match=match):
            protocol_arms(*bad)


@pytest.mark.slow  # ~30 s: out of the default run (15-minute aim), CI runs it
def test_authors_protocol_campaign_reports_beside_their_numbers(ray_cluster, stores):
    result = run_campaign("mnist-autoencoder", protocol="authors", only=["np-50", "sg-50"],
                          seeds=2, epochs=2, batches_per_epoch=5, dataset="mnist-5k",
                          parallel_trials=2, name="ae-authors",
                          tracking_uri=stores["tracking_uri"], storage=stores["storage"])
    assert all(not isinstance(r, Exception) for r in result.studies.values()), result.studies
    report = R.build_report(result.run_id, stores["tracking_uri"], stores["dir"] / "authors")
    rows = {r["arm"]: r for r in report.table}
    assert set(rows) == {"np-50", "sg-50"}
    c = MlflowClient(stores["tracking_uri"])
    for key, paper in (("np-50", "515.3"), ("sg-50", "512.7")):
        row = rows[key]
        assert row["paper"] == paper and row["seeds"] == 2  # the one trial + 1 more seed
        assert row["metric"].startswith("min per-step test loss per 32 images")
        arm = next(a for a in report.arms if a.key == key)
        seeds = sorted(int(r.data.params["seed"]) for r in arm.runs)
        assert seeds == [0, 1]
        values = []
        for r in arm.runs:
            assert r.data.params["hidden_width"] == "50" and r.data.params["init"] == "authors"
            hist = c.get_metric_history(r.info.run_id, "step_test_loss")
            assert len(hist) == 2
            values.append(min(m.value for m in hist))
        assert sorted(row["values"]) == pytest.approx(sorted(values))
    assert "515.3" in report.html.read_text()


def test_credit_paper_protocol_errors_exit_2():
    for argv, text in ((["mnist-fc", "--protocol", "fair"], "mnist-autoencoder"),
                       (["cifar10-cnn", "--protocol", "authors"], "no recorded settings"),
                       (["mnist-autoencoder", "--protocol", "authors", "--seeds", "0"],
                        "--seeds"),
                       (["mnist-autoencoder", "--protocol", "mine"], "--protocol")):
        proc = subprocess.run([sys.executable, "-m", "service.cli", "paper", *argv],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert text in proc.stderr and "Traceback" not in proc.stderr
