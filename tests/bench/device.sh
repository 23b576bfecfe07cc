#!/usr/bin/env bash
# The GPU machine's checks, in stages (one `device` call each; see tests/bench/README.md):
#   probe   install carried wheels, CUDA tests, start the authors' autoencoder arms and
#           feedback alignment on mnist-fc in the background (setsid), until $2 seconds
#   data    nothing: a call whose only job is to carry one more part of CIFAR-10
#   cifar   assemble CIFAR-10, run the cifar10-cnn arms until $2 seconds, then collect
#           every run's per-epoch JSON into $OUT/runs.tar.gz
set -uo pipefail
stage=$1
export PYTHONUNBUFFERED=1 CREDIT_DATA_DIR=$PWD/.device/data
mkdir -p .device/data .device/runs
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl >/dev/null 2>&1 && export PYTHONPATH=/tmp/site:$PWD
case "$stage" in
probe)
  cp .device/mnist.npz .device/data/
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  setsid nohup python3 -m tests.bench.fidelity_runs --device cuda --deadline "$2" \
    --arms np-50,bp-200,sg-50,adam-200,fa-200,matched-50,fa-fc --out .device/runs \
    > .device/runs/driver.log 2>&1 < /dev/null &
  python3 -m pytest -q -p no:cacheprovider tests/trainables/test_trainer.py \
    tests/trainables/test_data.py tests/trainables/test_authors_protocol.py \
    -k "cuda or authors or sum_reduction or step_test" 2>&1 | tee $OUT/pytest.log | tail -15
  sleep 5; tail -n 3 .device/runs/*.log
  ;;
data) ls -la .device ;;
cifar)
  python3 - <<'PY'
import numpy as np
parts = [np.load(f".device/cifar_{k}.npz") for k in "abc"]
test = np.load(".device/cifar_test.npz")
np.savez(".device/data/cifar10.npz", x_train=np.concatenate([p["x"] for p in parts]),
         y_train=np.concatenate([p["y"] for p in parts]), x_test=test["x"], y_test=test["y"])
print("cifar10", sum(len(p["y"]) for p in parts), "train", len(test["y"]), "test")
PY
  python3 -m pytest -q -p no:cacheprovider tests/trainables/test_trainer.py -k cifar10 \
    2>&1 | tail -3
  timeout "$2" python3 -m tests.bench.fidelity_runs --device cuda --deadline "$(( $2 - 25 ))" \
    --arms cifar-np,cifar-dfa,cifar-bp --out .device/runs
  for f in .device/runs/*.json; do python3 -c "import json,sys; d=json.load(open('$f'));\
    h=d['history'][-1]; print(d['arm'], d['epochs_done'], '/', d['epochs_planned'], 'epochs',\
    round(d['wall_s']), 's', {k: round(v, 4) for k, v in h.items() if k in\
    ('test_error', 'test_loss', 'step_test_loss')})"; done
  tar czf $OUT/runs.tar.gz .device/runs
  ;;
esac
