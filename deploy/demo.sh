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
# Knobs: CREDIT_PORT (8000), DEMO_TRIALS (20), DEMO_EPOCHS (150), DEMO_SEEDS (3),
# CREDIT_STARTUP_TIMEOUT (600 s: how long Ray, MLflow and the Optuna dashboard may take).
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

# Until the API answers: the stack's own progress lines are shown as they come. The
# deadline is the stack's (CREDIT_STARTUP_TIMEOUT, 600 s by default); nothing is retried.
.venv/bin/python - "$CREDIT_URL" "$serve" "$log" <<'EOF'
import os, sys, time
import httpx
url, pid, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
shown = 0
def show_new_lines():
    global shown
    try:
        lines = open(log, errors="replace").read().splitlines()
    except OSError:
        return
    for line in lines[shown:]:
        if not line.startswith("INFO:"):  # uvicorn's own lines
            print(line, flush=True)
    shown = len(lines)
while True:
    show_new_lines()
    try:
        if httpx.get(url + "/healthz", timeout=2).json()["status"] == "ok":
            time.sleep(0.5)
            show_new_lines()
            sys.exit(0)
    except (httpx.HTTPError, ValueError, KeyError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        show_new_lines()
        print(f"credit serve --local stopped (its log: {log})", file=sys.stderr)
        sys.exit(1)
    time.sleep(1)
EOF

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
read -r mlflow_runs optuna_page < <("$credit" studies show "$name" --json | .venv/bin/python -c \
  'import json, sys; l = json.load(sys.stdin)["links"]; print(l["mlflow"] or "-", l["optuna"] or "-")')
echo
echo "Its runs in the MLflow UI (the runs table, filtered to this study, best first):"
echo "  $mlflow_runs"
echo "Its parameters in the Optuna dashboard (importances, parallel coordinates, contours):"
echo "  $optuna_page"
echo "The service's page (studies, trials, CSV/JSON export): $CREDIT_URL/   (token: $CREDIT_HOME/api_token)"
echo "The API: $CREDIT_URL/docs   (credit studies list | show | best | export)"
[ "$status" -eq 0 ] || echo "(the study did not succeed: see 'credit studies show $name')"
echo
echo "The stack stays up; Ctrl-C stops it."
wait "$serve"
