"""How each rule's feedback evolves during training, and look-up by name."""

from __future__ import annotations

import pytest
import torch

from trainables.config import TrainConfig
from trainables.errors import ConfigError
from trainables.rules import RULES, make_rule
from trainables.trainer import Trainer

ALL_RULES = [
    "backprop", "feedback_alignment", "direct_feedback_alignment", "node_perturbation",
    "node_perturbation_direct", "matched", "kolen_pollack", "synthetic_gradient",
]


def _trainer(rule, **kw):
    cfg = dict(rule=rule, epochs=1, lr=0.1, momentum=0.9, batches_per_epoch=40,
               metrics_batch_size=64, max_test_samples=200)
    cfg.update(kw)
    return Trainer(TrainConfig(**cfg))


def _feedback(trainer):
    return [b.clone() for b in trainer.rule.feedback if b is not None]


def test_every_rule_of_the_design_is_registered():
    assert RULES.names() == sorted(ALL_RULES)


def test_unknown_rule_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="backprop.*node_perturbation"):
        RULES.get("backprob")
    with pytest.raises(ValueError, match="unknown rule 'backprob'"):
        TrainConfig(rule="backprob")


@pytest.mark.parametrize("rule", ["feedback_alignment", "direct_feedback_alignment"])
def test_fixed_feedback_never_changes(rule):
    tr = _trainer(rule)
    before = _feedback(tr)
    w_before = [w.clone() for w in tr.net.weights]
    tr.run_epoch()
    for a, b in zip(before, _feedback(tr), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(w_before[0], tr.net.weights[0])  # while W did learn


def test_matched_keeps_w_minus_b_constant():
    tr = _trainer("matched", optimizer="adam", lr=0.003)
    gap = [w - b for w, b in zip(tr.net.weights[1:], _feedback(tr), strict=True)]
    w_before = [w.clone() for w in tr.net.weights]
    tr.run_epoch()
    for g, w, b in zip(gap, tr.net.weights[1:], _feedback(tr), strict=True):
        torch.testing.assert_close(w - b, g, atol=1e-5, rtol=0)
    assert (tr.net.weights[1] - w_before[1]).norm() > 0.05  # and W really moved


def test_kolen_pollack_shrinks_w_minus_b_geometrically():
    lr, wd, n = 0.1, 0.05, 40
    tr = _trainer("kolen_pollack", momentum=0.0, lr=lr, weight_decay=wd, batches_per_epoch=n)
    gap0 = [(w - b).norm() for w, b in zip(tr.net.weights[1:], _feedback(tr), strict=True)]
    tr.run_epoch()
    gap1 = [(w - b).norm() for w, b in zip(tr.net.weights[1:], _feedback(tr), strict=True)]
    for g0, g1 in zip(gap0, gap1, strict=True):
        torch.testing.assert_close(g1 / g0, torch.tensor((1 - lr * wd) ** n), rtol=1e-4, atol=0)


def test_kolen_pollack_without_decay_is_refused():
    with pytest.raises(ValueError, match="weight_decay > 0"):
        TrainConfig(rule="kolen_pollack")


@pytest.mark.parametrize("rule", ["node_perturbation", "node_perturbation_direct",
                                  "synthetic_gradient"])
def test_learned_feedback_moves_towards_alignment(rule):
    tr = _trainer(rule, feedback_lr=0.05, noise_std=0.01, batches_per_epoch=125, epochs=2)
    before = _feedback(tr)
    first = tr.alignment()
    tr.fit()
    assert any(not torch.equal(a, b) for a, b in zip(before, _feedback(tr), strict=True))
    last = tr.history[-1]
    assert last["angle/fc3"] < first["angle/fc3"] - 10


def test_synthetic_gradient_beats_node_perturbation_on_top_layer_alignment():
    """The control regresses on the exact gradient, so it aligns at least as well as NP."""
    np_, sg = (_trainer(r, feedback_lr=0.05, batches_per_epoch=125) for r in
               ("node_perturbation", "synthetic_gradient"))
    np_.run_epoch()
    sg.run_epoch()
    assert sg.history[-1]["relative_error/fc3"] < np_.history[-1]["relative_error/fc3"]


def test_lstsq_refuses_layerwise_conv_feedback():
    from tests.trainables.helpers import make_net, rule_settings, small_cnn_layers

    net = make_net(small_cnn_layers(), "cross_entropy", (3, 16, 16))
    with pytest.raises(ConfigError, match="lstsq"):
        make_rule("node_perturbation", net, rule_settings(feedback_solver="lstsq"),
                  torch.Generator())
    make_rule("node_perturbation_direct", net, rule_settings(feedback_solver="lstsq"),
              torch.Generator())
