"""Figures of a trial, checked on the matplotlib objects built from real training runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.figure import Figure

from trainables import plots
from trainables.config import TrainConfig
from trainables.trainer import Trainer

TINY = dict(epochs=2, batches_per_epoch=10, metrics_batch_size=64, max_test_samples=200)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def np_history():
    return Trainer(TrainConfig(rule="node_perturbation", **TINY)).fit().history


@pytest.fixture(scope="module")
def autoencoder():
    trainer = Trainer(TrainConfig(experiment="mnist-autoencoder", **TINY))
    history = trainer.fit().history
    codes, labels = trainer.latent_codes()
    originals, recon = trainer.reconstructions(6)
    return dict(history=history, codes=codes, labels=labels, originals=originals, recon=recon)


def _legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _line(ax, label: str):
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
    return line


def _panel(fig: Figure, ylabel_start: str):
    (ax,) = [ax for ax in fig.axes if ax.get_ylabel().startswith(ylabel_start)]
    return ax


def _alignment_panels(fig: Figure) -> dict[str, object]:
    labels = {"angle": "angle", "update_angle": "update angle",
              "relative_error": "relative error", "sign_congruence": "sign congruence"}
    return {fam: _panel(fig, start) for fam, start in labels.items()
            if any(ax.get_ylabel().startswith(start) for ax in fig.axes)}


# ------------------------------------------------------------ learning curves
def test_learning_curves_classification(np_history):
    fig = plots.learning_curves(np_history, title="np")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2
    loss_ax, err_ax = fig.axes
    assert loss_ax.get_xlabel() == err_ax.get_xlabel() == "epoch"
    assert loss_ax.get_ylabel() == "loss"
    assert err_ax.get_ylabel() == "test error (%)"
    assert _legend_texts(loss_ax) == ["train", "test"]
    assert fig.get_suptitle() == "np"

    epochs = [h["epoch"] for h in np_history]
    train, test = _line(loss_ax, "train"), _line(loss_ax, "test")
    assert list(train.get_xdata()) == epochs
    assert list(train.get_ydata()) == [h["train_loss"] for h in np_history]
    assert list(test.get_ydata()) == [h["test_loss"] for h in np_history]
    assert train.get_linestyle() == "--" and test.get_linestyle() == "-"
    (err_line,) = err_ax.get_lines()
    np.testing.assert_allclose(err_line.get_ydata(), [100 * h["test_error"] for h in np_history])
    assert err_ax.get_ylim()[0] == 0


def test_learning_curves_autoencoder_has_no_error_panel(autoencoder):
    history = autoencoder["history"]
    fig = plots.learning_curves(history)
    assert len(fig.axes) == 1
    (ax,) = fig.axes
    assert _legend_texts(ax) == ["train", "test"]
    assert list(_line(ax, "test").get_ydata()) == [h["test_loss"] for h in history]
    assert fig.get_suptitle() == ""


# ------------------------------------------------------------------ alignment
def test_alignment_curves_node_perturbation(np_history):
    fig = plots.alignment_curves(np_history)
    panels = _alignment_panels(fig)
    assert len(fig.axes) == 4
    assert set(panels) == {"angle", "update_angle", "relative_error", "sign_congruence"}

    angle = panels["angle"]
    assert angle.get_ylim() == (0, 180)
    assert _legend_texts(angle) == ["fc2", "fc3"]
    assert any(list(ln.get_ydata()) == [90, 90] and ln.get_linestyle() == ":"
               for ln in angle.get_lines())
    for layer in ("fc2", "fc3"):
        assert list(_line(angle, layer).get_ydata()) == [h[f"angle/{layer}"] for h in np_history]
        assert angle.get_xlabel() == "epoch"
    assert _legend_texts(panels["update_angle"]) == ["fc1", "fc2"]
    assert _legend_texts(panels["relative_error"]) == ["fc2", "fc3"]
    assert _legend_texts(panels["sign_congruence"]) == ["fc2", "fc3"]
    assert panels["sign_congruence"].get_ylim() == (0, 100)
    rel = panels["relative_error"]
    assert rel.get_ylim()[0] == 0
    assert rel.get_ylim()[1] >= max(h["relative_error/fc2"] for h in np_history)
    # one colour per layer across panels
    assert (_line(angle, "fc2").get_color()
            == _line(panels["update_angle"], "fc2").get_color())


def test_alignment_skips_absent_families(np_history):
    """A direct rule has relative error and sign congruence for the top layer only;
    a history without them gets no such panels (and no empty fourth axis)."""
    direct = [{k: v for k, v in h.items()
               if k not in ("relative_error/fc2", "sign_congruence/fc2")} for h in np_history]
    panels = _alignment_panels(plots.alignment_curves(direct))
    assert _legend_texts(panels["relative_error"]) == ["fc3"]
    assert _legend_texts(panels["sign_congruence"]) == ["fc3"]

    no_weights = [{k: v for k, v in h.items()
                   if not k.startswith(("relative_error", "sign_congruence"))}
                  for h in np_history]
    fig = plots.alignment_curves(no_weights)
    assert len(fig.axes) == 2
    assert set(_alignment_panels(fig)) == {"angle", "update_angle"}

    only_angle = [{k: v for k, v in h.items() if not k.startswith(("relative", "sign", "upd"))}
                  for h in np_history]
    assert len(plots.alignment_curves(only_angle).axes) == 1

    fig = plots.alignment_curves([{"epoch": 1, "train_loss": 1.0, "test_loss": 1.0}])
    assert len(fig.axes) == 1  # a note, not a crash


def test_nan_and_none_values_still_plot(np_history, tmp_path):
    history = [dict(h) for h in np_history]
    history[0]["angle/fc2"] = math.nan
    history[1]["angle/fc3"] = None  # how TrainResult.to_json writes a NaN
    history[1]["relative_error/fc2"] = math.nan
    for h in history:
        h["update_angle/fc1"] = math.nan  # a whole line without a value
    figs = plots.trial_figures(history)
    angle = _alignment_panels(figs["alignment.png"])["angle"]
    assert math.isnan(_line(angle, "fc2").get_ydata()[0])
    assert math.isnan(_line(angle, "fc3").get_ydata()[1])
    assert angle.get_ylim() == (0, 180)
    for path in plots.save_figures(figs, tmp_path):
        assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_backprop_zeros_plot():
    history = [{"epoch": e, "train_loss": 0.4, "test_loss": 0.4, "test_error": 0.5,
                "angle/fc2": 0.0, "relative_error/fc2": 0.0, "sign_congruence/fc2": 100.0,
                "update_angle/fc1": 0.0} for e in (1, 2)]
    fig = plots.alignment_curves(history)
    assert len(fig.axes) == 4
    assert _alignment_panels(fig)["relative_error"].get_ylim()[0] == 0


# ----------------------------------------------------------------- autoencoder
def test_latent_scatter(autoencoder):
    codes, labels = autoencoder["codes"], autoencoder["labels"]
    fig = plots.latent_scatter(codes, labels, title="codes")
    (ax,) = fig.axes
    assert ax.get_xlabel() == "code 1" and ax.get_ylabel() == "code 2"
    (points,) = ax.collections
    assert len(points.get_offsets()) == len(codes)
    np.testing.assert_array_equal(np.asarray(points.get_offsets()), codes)
    assert _legend_texts(ax) == [str(d) for d in np.unique(labels)]
    assert set(np.unique(labels)) == set(range(10))  # 200 test digits hold every class
    assert fig.get_suptitle() == "codes"


def test_latent_scatter_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        plots.latent_scatter(np.zeros((5, 3)), np.zeros(5))
    with pytest.raises(ValueError, match="labels"):
        plots.latent_scatter(np.zeros((5, 2)), np.zeros(4))


def test_reconstructions(autoencoder):
    originals, recon = autoencoder["originals"], autoencoder["recon"]
    fig = plots.reconstructions(originals, recon)
    assert len(fig.axes) == 2 * len(originals)
    images = [ax.get_images() for ax in fig.axes]
    assert all(len(im) == 1 for im in images)
    assert all(im[0].get_array().shape == (28, 28) for im in images)
    n = len(originals)
    np.testing.assert_array_equal(fig.axes[0].get_images()[0].get_array(),
                                  originals[0].reshape(28, 28))
    np.testing.assert_array_equal(fig.axes[n].get_images()[0].get_array(),
                                  recon[0].reshape(28, 28))
    assert fig.axes[0].get_ylabel() == "original"
    assert fig.axes[n].get_ylabel() == "reconstruction"
    with pytest.raises(ValueError):
        plots.reconstructions(originals, recon[:-1])


# ------------------------------------------------------------- trial + saving
def test_trial_figures_and_save(autoencoder, np_history, tmp_path):
    ae = autoencoder
    figs = plots.trial_figures(ae["history"], codes=ae["codes"], labels=ae["labels"],
                               originals=ae["originals"], recon=ae["recon"], title="ae")
    assert list(figs) == ["learning_curves.png", "alignment.png", "latent.png",
                          "reconstructions.png"]
    assert all(f.get_suptitle() == "ae" for f in figs.values())
    assert _legend_texts(_alignment_panels(figs["alignment.png"])["angle"]) == [
        "fc2", "fc3", "fc4"]

    paths = plots.save_figures(figs, tmp_path / "trial")
    assert [p.name for p in paths] == list(figs)
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000

    assert list(plots.trial_figures(np_history)) == ["learning_curves.png", "alignment.png"]
    with pytest.raises(ValueError):
        plots.trial_figures(np_history, codes=ae["codes"])


def test_save_figures_names(np_history, tmp_path):
    fig = plots.learning_curves(np_history)
    (path,) = plots.save_figures({"curves": fig}, tmp_path)
    assert path.name == "curves.png" and path.read_bytes().startswith(PNG_SIGNATURE)
    with pytest.raises(ValueError):
        plots.save_figures({"../escape.png": fig}, tmp_path)


# ------------------------------------------------------------ shared sheets
def _pixels(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    assert png.startswith(PNG_SIGNATURE)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def test_curve_sheets_draw_what_one_trials_figures_draw(np_history, tmp_path):
    """One run through CurveSheets: the same picture as its own figures, saved."""
    pngs = plots.CurveSheets([np_history]).render(np_history, "np · trial 1")
    assert list(pngs) == ["learning_curves.png", "alignment.png"]
    saved = plots.save_figures(plots.trial_figures(np_history, title="np · trial 1"), tmp_path)
    for path in saved:
        new, old = _pixels(pngs[path.name]), _pixels(path.read_bytes())
        assert new.shape == old.shape
        differ = np.abs(new - old).max(axis=-1) > 32
        assert differ.mean() < 0.005, (path.name, differ.mean())  # where lines meet spines


def test_curve_sheets_redraw_each_run_on_common_axes(np_history):
    """Runs of one population: each rendered alone (nothing of another run is left),
    again identically, on axes that hold every run."""
    worse = [{**h, "train_loss": 4 * h["train_loss"], "test_loss": 4 * h["test_loss"],
              "test_error": min(1.0, 3 * h["test_error"])} for h in np_history]
    sheets = plots.CurveSheets([np_history, worse])
    first = sheets.render(np_history, "a")
    other = sheets.render(worse, "b")
    assert sheets.render(np_history, "a") == first
    for name in first:
        assert (_pixels(first[name]) != _pixels(other[name])).any()
    loss = _panel(sheets.figures["learning_curves.png"], "loss")
    top = max(max(h["train_loss"], h["test_loss"]) for h in worse)
    low = min(min(h["train_loss"], h["test_loss"]) for h in np_history)
    assert loss.get_ylim()[0] <= low and loss.get_ylim()[1] >= top
    error = _panel(sheets.figures["learning_curves.png"], "test error")
    assert error.get_ylim()[0] == 0 and error.get_ylim()[1] >= 100 * max(
        h["test_error"] for h in worse)
    # the lines hold the last run drawn, scaled as in the run's own figures
    (line,) = [ln for ln in error.get_lines() if ln.get_gid() == "test_error"]
    np.testing.assert_allclose(line.get_ydata(), [100 * h["test_error"] for h in np_history])
