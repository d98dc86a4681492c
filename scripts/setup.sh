#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its test extras at the exact versions
# of constraints.txt (what CI runs). Idempotent. torch==2.13.0 there is matched by the CPU build
# pip finds locally (find-links); to keep a CUDA torch of another version, install into that
# environment with `pip install -e .[dev]` instead (README, "Install into an existing environment").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
echo "environment ready: $(pwd)/.venv"
