#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its test extras. Idempotent.
# torch is pinned to the CPU build that pip finds locally; on a GPU machine install the CUDA
# build of torch first and this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "environment ready: $(pwd)/.venv"
