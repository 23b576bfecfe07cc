#!/usr/bin/env bash
# Install credit-search into a virtual environment in the checkout (.venv).
# Idempotent: reinstalls only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3
if [ ! -x .venv/bin/python ]; then
  echo "credit-search: creating .venv with $($py --version)" >&2
  "$py" -m venv .venv
fi
stamp=.venv/.credit-search-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "credit-search: installing (torch is large: the first install takes minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi
