"""Populations measured: how exactly a member equals its lone run, and members per second.

    python -m tests.bench.bench_population [--device cpu|cuda] [--sizes 1,16,128,1024]
                                           [--batches 50] [--no-exactness] [--no-conv]

1. Exactness, per rule (the settings of ``tests/trainables/test_population.py``, 3
   members differing in η, c, η_B, momentum or weight decay, 3 epochs of mnist-5k): the
   largest relative difference between a member and its lone ``Trainer`` over every
   weight, feedback matrix and metric, in float64; in float32, the same for the weights
   and whether the test errors agree to three decimals.
   The same for the CIFAR-10 CNN (grouped convolutions; 3 members of two training seeds,
   2 epochs of 1 batch of 4 random images: the architecture's numbers, not CIFAR's),
   every rule, float64 only.
2. Throughput on ``--device``: member-steps per second of the paper's MNIST network
   (784-50-20-10, batch 32, node perturbation with least squares) trained as one
   population of K members, against the same K configurations trained one after another
   by lone ``Trainer``s in this process (the baseline, measured here up to K = 128 and
   extrapolated per member beyond: it is linear in K).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import torch

from tests.trainables.test_population import (
    CONV,
    CONV_LR_DIVISOR,
    RULES,
    _member_configs,
    _solo_and_population,
    _tiny_cifar_like,
)
from trainables.config import TrainConfig
from trainables.data import load_dataset
from trainables.errors import ConfigError
from trainables.population import PopulationTrainer
from trainables.trainer import Trainer


def _rel(a, b) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def _worst(solos, pop) -> tuple[float, float]:
    """(weights, metrics): the largest relative differences of any member."""
    w = m = 0.0
    for k, solo in enumerate(solos):
        row = pop.keys.index(str(k))
        ours = [t[row] for t in pop.net.parameters()]
        ours += [b[row] for b in pop.rule.feedback if b is not None]
        theirs = solo.net.parameters() + [b for b in solo.rule.feedback if b is not None]
        w = max([w] + [_rel(a, b) for a, b in zip(ours, theirs, strict=True)])
        for got, want in zip(pop.members[str(k)].history, solo.history, strict=True):
            for name, value in want.items():
                if name == "time_s" or not math.isfinite(value) or (
                        "angle" in name and abs(value) < 1e-3):
                    continue  # an angle of ~0 is acos(1 − ε): absolute, not relative
                m = max(m, abs(got[name] - value) / max(abs(value), 1e-12))
    return w, m


def exactness() -> None:
    data = load_dataset("mnist-5k")
    data64 = dataclasses.replace(data, x_train=data.x_train.double(),
                                 x_test=data.x_test.double())
    print(f"{'rule':<44}{'f64 weights':>12}{'f64 metrics':>12}{'f32 weights':>12}"
          f"{'f32 test_error equal':>22}")
    for base in RULES:
        torch.set_default_dtype(torch.float64)
        try:
            w64, m64 = _worst(*_solo_and_population(_member_configs(base), data64))
        finally:
            torch.set_default_dtype(torch.float32)
        solos, pop = _solo_and_population(_member_configs(base, max_test_samples=None), data)
        w32, _ = _worst(solos, pop)
        equal = all(round(pop.members[str(k)].history[-1]["test_error"], 3)
                    == round(s.history[-1]["test_error"], 3) for k, s in enumerate(solos))
        name = "-".join(str(v) for v in base.values())
        print(f"{name:<44}{w64:>12.1e}{m64:>12.1e}{w32:>12.1e}{str(equal):>22}")


def conv_exactness() -> None:
    print(f"\n{'CIFAR-10 CNN, rule':<44}{'f64 weights':>12}{'f64 metrics':>12}")
    for base in RULES:
        torch.set_default_dtype(torch.float64)
        try:
            data = _tiny_cifar_like()
            configs = [TrainConfig(**{**c.model_dump(), **CONV, "lr": c.lr / CONV_LR_DIVISOR})
                       for c in _member_configs(base, seeds=(0, 1, 0))]
            try:
                w64, m64 = _worst(*_solo_and_population(configs, data))
            except ConfigError as error:  # e.g. layer-wise least squares on convolutions
                print(f"{'-'.join(str(v) for v in base.values()):<44}  not a CNN rule: "
                      f"{error}")
                continue
        finally:
            torch.set_default_dtype(torch.float32)
        name = "-".join(str(v) for v in base.values())
        print(f"{name:<44}{w64:>12.1e}{m64:>12.1e}", flush=True)


def throughput(device: str, sizes: list[int], batches: int) -> None:
    data = load_dataset("mnist-5k")
    base = dict(experiment="mnist-fc", rule="node_perturbation", feedback_solver="lstsq",
                epochs=1, batches_per_epoch=batches, max_test_samples=500,
                metrics_batch_size=64, device=device)
    print(f"\nthroughput on {device}: member-steps/s, {batches} batches of 32 per member")
    print(f"{'K':>6}{'population s':>14}{'steps/s':>12}{'lone Trainers s':>17}"
          f"{'steps/s':>12}{'speed-up':>10}")
    per_member = None
    for k in sizes:
        # η from 0.02 to 0.1, c from 0.005 to 0.05 (none diverges)
        configs = [TrainConfig(**base, lr=0.02 + 0.08 * i / k, noise_std=0.005 + 0.045 * i / k,
                               feedback_lr=0.01) for i in range(k)]
        pop = PopulationTrainer(configs, dataset=data)
        _sync(device)
        t = time.perf_counter()
        pop.run_epoch()
        _sync(device)
        pop_s = time.perf_counter() - t
        if k <= 128:
            t = time.perf_counter()
            for c in configs:
                Trainer(c, dataset=data).run_epoch()
            _sync(device)
            lone_s = time.perf_counter() - t
            per_member = lone_s / k
            lone = f"{lone_s:>17.2f}"
        else:
            lone_s = per_member * k
            lone = f"{'~' + format(lone_s, '.2f'):>17}"
        steps = k * batches
        print(f"{k:>6}{pop_s:>14.2f}{steps / pop_s:>12.0f}{lone}{steps / lone_s:>12.0f}"
              f"{lone_s / pop_s:>10.1f}")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="1,16,128,1024")
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--no-exactness", action="store_true")
    ap.add_argument("--no-conv", action="store_true", help="leave out the CNN's exactness")
    args = ap.parse_args()
    torch.set_num_threads(1)  # as a trial holding one CPU
    if not args.no_exactness:
        exactness()
        if not args.no_conv:
            conv_exactness()
    throughput(args.device, [int(s) for s in args.sizes.split(",")], args.batches)


if __name__ == "__main__":
    main()
