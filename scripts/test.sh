#!/usr/bin/env bash
# Set up the environment (if needed) and run the CPU test suite. This is the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q --timeout=900 "$@"
