#!/usr/bin/env bash
# Set up the environment (if needed) and run the CPU demo: build shards from the bundled real
# data and train a tiny model per modality through the real trainer. This is the README's run command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/bioxlstm demo "$@"
