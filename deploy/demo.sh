#!/usr/bin/env bash
# README command #1, the main job: install, start the local stack (a private Ray head
# with its dashboard, an MLflow server and the HTTP API, all on loopback), submit the
# demo study over HTTP, show its progress, print the best configuration and the MLflow
# UI address where its runs can be browsed, and keep the stack up until Ctrl-C.
#
# The demo study: a random search over the forward learning rate η, the noise std c
# and the feedback learning rate η_B of node perturbation (preset
# mnist-fc-node-perturbation) on mnist-5k, 20 trials of 150 epochs, 2 at a time, then the best
# configuration rerun with 3 seeds. State lives in $CREDIT_HOME (default ~/.credit).
# Knobs: CREDIT_PORT (8000), DEMO_TRIALS (20), DEMO_EPOCHS (150), DEMO_SEEDS (3).
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install.sh

export CREDIT_HOME="${CREDIT_HOME:-$HOME/.credit}"
port="${CREDIT_PORT:-8000}"
export CREDIT_URL="http://127.0.0.1:${port}"
if [ -n "${CREDIT_API_TOKENS:-}" ] && [ -z "${CREDIT_TOKEN:-}" ]; then
  export CREDIT_TOKEN="${CREDIT_API_TOKENS%%,*}"  # else the client reads $CREDIT_HOME/api_token
fi
credit=.venv/bin/credit
mkdir -p "$CREDIT_HOME/logs"
log="$CREDIT_HOME/logs/serve.log"

echo "credit-search demo: starting the local stack (log: $log) ..."
"$credit" serve --local --port "$port" >"$log" 2>&1 &
serve=$!

stop_stack() {
  trap - INT TERM EXIT
  if kill -0 "$serve" 2>/dev/null; then
    echo
    echo "stopping the stack (API, studies still running, MLflow, Ray) ..."
    kill -TERM "$serve" 2>/dev/null || true
    wait "$serve" 2>/dev/null || true
    tail -n 1 "$log"
  fi
}
trap 'stop_stack; exit 130' INT TERM
trap stop_stack EXIT

# until the API answers and says Ray and MLflow are reachable
.venv/bin/python - "$CREDIT_URL" "$serve" "$log" <<'EOF'
import os, sys, time
import httpx
url, pid, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    try:
        if httpx.get(url + "/healthz", timeout=2).json()["status"] == "ok":
            sys.exit(0)
    except (httpx.HTTPError, ValueError, KeyError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        print("credit serve --local stopped; its log:", file=sys.stderr)
        print(open(log).read()[-3000:], file=sys.stderr)
        sys.exit(1)
    time.sleep(1)
print(f"the stack did not come up within 5 minutes (see {log})", file=sys.stderr)
sys.exit(1)
EOF
grep -A6 "credit-search is up" "$log" || true

name="demo-$(date +%Y%m%d-%H%M%S)"
echo
echo "submitting the demo study $name over HTTP (POST $CREDIT_URL/studies) ..."
start=$(date +%s)
"$credit" studies submit --space mnist-fc-node-perturbation --name "$name" \
  --sampler random --seed 0 --trials "${DEMO_TRIALS:-20}" --concurrency 2 \
  --epochs "${DEMO_EPOCHS:-150}" --dataset mnist-5k --final-seeds "${DEMO_SEEDS:-3}"
echo
status=0
"$credit" studies wait "$name" || status=$?
echo
echo "the study took $(( $(date +%s) - start )) s"
mlflow_ui=$(.venv/bin/python -c "import httpx, sys; print(httpx.get(sys.argv[1] + '/healthz').json()['mlflow_ui_url'])" "$CREDIT_URL")
echo
echo "Browse its runs in the MLflow UI:  $mlflow_ui   (experiment credit-search, run $name)"
echo "The API:                           $CREDIT_URL/docs   (credit studies list | show | best)"
[ "$status" -eq 0 ] || echo "(the study did not succeed: see 'credit studies show $name')"
echo
echo "The stack stays up; Ctrl-C stops it."
wait "$serve"
