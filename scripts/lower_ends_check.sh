#!/usr/bin/env bash
# The suite's lower-end subset: the lower ends pyproject.toml declares for the libraries that are
# not pinned to CI's own version, installed beside the pinned ones (pip install --target, first on
# PYTHONPATH; the environment is not changed), then the tests that exercise them: shard builds
# (RDKit, zstandard, tqdm), export round trips (safetensors), config loading (PyYAML), the trainer
# with TensorBoard (numpy, tensorboard) and the Triton interpreter on numpy 1.26.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
TARGET="${LOWER_ENDS_DIR:-${TMPDIR:-/tmp}/bioxlstm_lower_ends}"
LOWER_ENDS=(numpy==1.26.4 tqdm==4.66.0 pyyaml==6.0.1 safetensors==0.4.0 zstandard==0.22.0 rdkit==2024.3.1
            tensorboard==2.15.0)
[ -d "$TARGET/numpy" ] || "$PYTHON" -m pip install --quiet --no-deps --target "$TARGET" "${LOWER_ENDS[@]}"
PYTHONPATH="$TARGET:$PWD" "$PYTHON" -c "import numpy, rdkit; print('numpy', numpy.__version__, 'rdkit', rdkit.__version__)"
PYTHONPATH="$TARGET:$PWD" exec "$PYTHON" -m pytest -q -p no:cacheprovider "$@" \
    tests/data_pipeline/test_shard_builders.py tests/export/test_roundtrip.py tests/pretrain/test_run_config.py \
    tests/environment/test_progress_output.py tests/kernels/test_triton_chunkwise.py \
    "tests/pretrain/test_orderly_shutdown.py::test_a_single_process_run_tears_down_on_every_exit_path"
