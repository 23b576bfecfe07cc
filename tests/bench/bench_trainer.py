"""Seconds per epoch of our trainer against a plain-PyTorch baseline, side by side.

    python -m tests.bench.bench_trainer [--repeats 3] [--device cpu]

784-50-20-10 (sigmoid, MSE), batch 32, full MNIST when $CREDIT_DATA_DIR holds
mnist.npz (else mnist-5k). The baseline is what a researcher would write:
``nn.Sequential`` + autograd + ``torch.optim.SGD``, batches indexed from one tensor
(no DataLoader), and a test-set evaluation per epoch like ours. Targets
(issue #2): node_perturbation ≤ 1.0×, backprop ≤ 0.8× the baseline epoch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from trainables.config import TrainConfig
from trainables.data import load_dataset
from trainables.trainer import Trainer

TARGETS = {"backprop": 0.8, "node_perturbation": 1.0}


def baseline_epoch(data, batch_size: int, seed: int, device) -> float:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 50), nn.Sigmoid(), nn.Linear(50, 20), nn.Sigmoid(),
                          nn.Linear(20, 10)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data.x_train, data.y_train
    t = torch.nn.functional.one_hot(y, 10).float()
    n = len(x) // batch_size
    start = time.perf_counter()
    perm = torch.randperm(len(x)).to(device)
    for b in range(n):
        idx = perm[b * batch_size : (b + 1) * batch_size]
        loss = 0.5 * ((model(x[idx]) - t[idx]) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        err = (model(data.x_test).argmax(1) != data.y_test).float().mean().item()
    elapsed = time.perf_counter() - start
    assert err == err  # evaluated
    return elapsed


def ours_epoch(rule: str, data, batch_size: int, seed: int, device) -> float:
    cfg = TrainConfig(rule=rule, dataset=data.name, epochs=1, lr=0.1, batch_size=batch_size,
                      seed=seed, device=str(device))
    tr = Trainer(cfg, dataset=data)
    start = time.perf_counter()
    tr.run_epoch()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    data_dir = os.environ.get("CREDIT_DATA_DIR")
    name = "mnist" if data_dir and os.path.exists(os.path.join(data_dir, "mnist.npz")) \
        else "mnist-5k"
    device = torch.device(args.device)
    data = load_dataset(name, data_dir).to(device)
    print(f"dataset {name}: {len(data.x_train)} train samples, batch {args.batch_size}, "
          f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    runs: dict[str, list[float]] = {"baseline": [], **{r: [] for r in TARGETS}}
    for rep in range(args.repeats):  # interleaved, so drift hits all alike
        runs["baseline"].append(baseline_epoch(data, args.batch_size, rep, device))
        for rule in TARGETS:
            runs[rule].append(ours_epoch(rule, data, args.batch_size, rep, device))
    base = statistics.median(runs["baseline"])
    print(f"{'what':<20}{'s/epoch (median)':>18}{'ratio':>8}{'target':>8}  ok")
    print(f"{'baseline (autograd)':<20}{base:>18.3f}{1.0:>8.2f}")
    failed = False
    for rule, target in TARGETS.items():
        t = statistics.median(runs[rule])
        ok = t / base <= target
        failed |= not ok
        print(f"{rule:<20}{t:>18.3f}{t / base:>8.2f}{target:>8.2f}  {'yes' if ok else 'NO'}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
