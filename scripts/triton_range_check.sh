#!/usr/bin/env bash
# The AOT compile gate under the lowest and the highest supported Triton, each installed beside
# the pinned one (pip install --target, first on PYTHONPATH; the environment is not changed).
# Needs no GPU: bench/gpu_compile.py compiles the kernels for sm_90 with Triton's own ptxas.
#   bash scripts/triton_range_check.sh                 # 3.6.0 and 3.9.0 (pyproject: >=3.6,<3.10)
#   bash scripts/triton_range_check.sh 3.8.0           # any versions
# Exit 0 when the gate passes under every version; results go in bench/RESULTS.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
VERSIONS=("$@")
[ ${#VERSIONS[@]} -gt 0 ] || VERSIONS=(3.6.0 3.9.0)
MODELS="${MODELS:-prot_xlstm_26m,prot_xlstm_102m}"
WORK="${TRITON_RANGE_DIR:-${TMPDIR:-/tmp}/bioxlstm_triton_range}"
failed=()
for version in "${VERSIONS[@]}"; do
    target="$WORK/triton-$version"
    if [ ! -d "$target/triton" ]; then
        "$PYTHON" -m pip install --quiet --no-deps --target "$target" "triton==$version"
    fi
    seen=$(PYTHONPATH="$target" "$PYTHON" -c "import triton; print(triton.__version__)")
    echo "== triton $seen ($target), gate: bench/gpu_compile.py --models $MODELS --archs 90 --check"
    if PYTHONPATH="$target:$PWD" "$PYTHON" bench/gpu_compile.py --models "$MODELS" --archs 90 --check; then
        echo "== triton $seen: PASS"
    else
        echo "== triton $seen: FAIL"
        failed+=("$version")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "the compile gate failed under triton ${failed[*]}" >&2
    exit 1
fi
echo "the compile gate passed under triton ${VERSIONS[*]}"
