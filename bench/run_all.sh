#!/usr/bin/env bash
# Every GPU benchmark in one command, sized for one device call of < 10 minutes:
#   1. bench/train_step.py  Prot-xLSTM-102M, its matched Transformer++, Prot-xLSTM-26M at contexts
#                           2^11, 2^13, 2^15, 2^16, 2^17, 2^18 (2^18 tokens per step), profile at 2^11
#   2. bench/train_step.py --trainer-host-path   Prot-xLSTM-102M at 2^11 and 2^17 again, with the
#                           trainer's host copies and syncs: the difference to 1. is their cost
#   3. bench/kernels.py     the mLSTM kernel vs flash attention and TFLA at the Prot-xLSTM head shapes
#                           (TFLA: mlstm-kernels 2.0.6 from $MLSTM_KERNELS_PATH, default .tfla/ in the
#                           repository, made before the device call with
#                           `pip install --no-deps --target .tfla mlstm-kernels==2.0.6` and carried along;
#                           (untracked: it travels with the working tree; never commit it, never install it
#                           into the environment); without it the TFLA row is skipped)
#   4. bench/plot.py        tokens/s vs context length
# Results go to $OUT_DIR (default bench/results/): train_step.{json,md}, train_step_trainer_path.{json,md},
# kernels.json, kernels.txt, train_step.png (or .svg without matplotlib), run_all.log. Elapsed
# time is printed after each part; each part has a hard time limit, and train_step.py writes its
# files after every context, so a part cut short still leaves what it measured.
#
#   bash bench/run_all.sh
#   OUT_DIR=bench/results/h100 BUDGET_S=540 bash bench/run_all.sh
#
# What the machine needs (it has no internet and gets a copy of the repository without .venv):
#   python with a CUDA build of torch and triton (the machine's own, e.g. torch 2.11 / Triton 3.6),
#   deepspeed, pyyaml, numpy, tqdm; megatron-core is optional (train_step.py then makes its own
#   one-process group). Nothing needs installing for the repository itself: the scripts put the
#   repository root on sys.path (`pip install -e . --no-deps` also works; a plain `pip install -e .`
#   would try to replace the machine's torch with the pinned 2.13). If some of these are missing and WHEELHOUSE
#   names a folder of wheels carried along, they are installed from it with
#   `pip install --no-index --no-deps --find-links "$WHEELHOUSE"`; otherwise the training-step part
#   is skipped with a message and the kernel benchmark still runs.
# Python: $PYTHON if set, else .venv/bin/python if carried and able to see a GPU, else python3.
set -uo pipefail
cd "$(dirname "$0")/.."

BUDGET_S="${BUDGET_S:-540}"              # whole script; the device call allows 600
TRAIN_STEP_S="${TRAIN_STEP_S:-350}"      # hard limit of part 1 (it stops starting contexts 75 s earlier)
TRAINER_PATH_S="${TRAINER_PATH_S:-60}"   # hard limit of part 2
OUT_DIR="${OUT_DIR:-bench/results}"
MODELS="${MODELS:-prot_xlstm_102m,transformer_102m,prot_xlstm_26m}"
CONTEXTS="${CONTEXTS:-2048,8192,32768,65536,131072,262144}"
mkdir -p "$OUT_DIR"
exec > >(tee "$OUT_DIR/run_all.log") 2>&1
unset TRITON_INTERPRET                    # the tests' CPU interpreter must not leak into timing
start=$SECONDS
elapsed() { echo "[run_all] $1: $((SECONDS - start)) s elapsed"; }

if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
elif [ -x .venv/bin/python ] && .venv/bin/python -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    PY=.venv/bin/python
else
    PY=python3
fi
echo "[run_all] python: $PY"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv
if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "[run_all] error: $PY sees no CUDA device (torch missing or CPU-only); the benchmarks need a GPU"
    exit 2
fi
"$PY" -c "import torch, triton; print(f'[run_all] torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}, {torch.cuda.get_device_name()}')"

missing() { "$PY" - "$@" <<'EOF'
import importlib.util, sys
print(" ".join(name for name in sys.argv[1:] if importlib.util.find_spec(name) is None))
EOF
}
need="$(missing deepspeed yaml numpy tqdm)"
if [ -n "$need" ] && [ -n "${WHEELHOUSE:-}" ] && [ -d "$WHEELHOUSE" ]; then
    echo "[run_all] installing from $WHEELHOUSE: everything there except torch/triton"
    wheels=$(ls "$WHEELHOUSE"/*.whl "$WHEELHOUSE"/*.tar.gz 2>/dev/null | grep -v -E '/(torch|triton|nvidia_)[-_]' || true)
    [ -n "$wheels" ] && "$PY" -m pip install --no-index --no-deps --find-links "$WHEELHOUSE" $wheels
    need="$(missing deepspeed yaml numpy tqdm)"
fi

# ---------------------------------------------------------------- 1. training step
if [ -z "$need" ] || [ "$need" = "tqdm" ]; then
    timeout -k 15 "$TRAIN_STEP_S" "$PY" bench/train_step.py --models "$MODELS" --contexts "$CONTEXTS" \
        --steps 3 --warmup 1 --profile --time-budget-s $((TRAIN_STEP_S - 75)) \
        --out "$OUT_DIR/train_step.json" --force
    echo "[run_all] train_step.py exit code $?"
    elapsed "training step done"
    timeout -k 10 "$TRAINER_PATH_S" "$PY" bench/train_step.py --models prot_xlstm_102m --contexts 2048,131072 \
        --steps 3 --warmup 1 --trainer-host-path --out "$OUT_DIR/train_step_trainer_path.json" --force
    echo "[run_all] train_step.py --trainer-host-path exit code $?"
else
    echo "[run_all] skipping train_step.py: python modules missing: $need (set WHEELHOUSE, see the header)"
fi
elapsed "training step with the trainer's host path done"

# ---------------------------------------------------------------- 2. kernels
left=$((BUDGET_S - (SECONDS - start) - 20))
MLSTM_KERNELS_PATH="${MLSTM_KERNELS_PATH:-.tfla}"
if [ -d "$MLSTM_KERNELS_PATH/mlstm_kernels" ]; then
    echo "[run_all] TFLA from $MLSTM_KERNELS_PATH"
else
    echo "[run_all] no mlstm_kernels in $MLSTM_KERNELS_PATH: kernels.py times without TFLA (see the header)"
fi
if [ "$left" -gt 30 ] && [ -z "$(missing tqdm)" ]; then
    PYTHONPATH="$MLSTM_KERNELS_PATH${PYTHONPATH:+:$PYTHONPATH}" timeout -k 10 "$left" "$PY" bench/kernels.py --configs 4x512,4x256 --segments 4 --min-log2 11 --max-log2 17 \
        --warmup-ms 10 --rep-ms 50 --check --out "$OUT_DIR/kernels.json" --force | tee "$OUT_DIR/kernels.txt"
    echo "[run_all] kernels.py exit code ${PIPESTATUS[0]}"
else
    echo "[run_all] skipping kernels.py (${left} s left of the budget, or tqdm missing)"
fi
elapsed "kernels done"

# ---------------------------------------------------------------- 3. plot
if [ -f "$OUT_DIR/train_step.json" ]; then
    "$PY" bench/plot.py "$OUT_DIR/train_step.json" --out "$OUT_DIR/train_step.png"
fi
elapsed "all done"
