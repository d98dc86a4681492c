"""End-to-end training step on one device: Prot-xLSTM vs a matched Transformer++ across context lengths.

A step is what the trainer does per optimizer step (pretrain/train.py): grad_accum micro-batches
of forward, summed token cross-entropy, backward through the DeepSpeed engine
(pretrain.engine.build_engine: ZeRO, bf16 on GPU / fp32 on CPU, gradient clipping, per-block
activation checkpointing as the run config says), then engine.step() (AdamW). Tokens per step
are held constant across contexts as in the curriculum: the run config's stage for that context
gives micro-batch x accumulation, otherwise micro-batch = min(tokens / S, --max-micro-batch).
Batches are random tokens already on the device (the loader's cost: bench/data_pipeline.py).

Numbers per (model, context):
    step_ms            median of --steps timed steps after --warmup untimed ones (CUDA events,
                       one synchronisation before and after the timed steps)
    tokens_per_s       tokens per step / step time
    model_tflops       training FLOPs per token (modeling/flops.py; bench/transformer_baseline.py
                       for the baseline: 3 x forward, recomputation not counted) x tokens/s
    mfu                model_tflops / bf16 matmul ceiling measured in this process (large square
                       matmuls); mfu_datasheet: against --datasheet-tflops (989, H100/H200 SXM)
    peak_memory_gib    torch.cuda.max_memory_allocated, reset before each context (weights,
                       gradients and optimizer state included); static_memory_gib: allocated
                       before that context's first step
An out-of-memory context is recorded as "OOM" and the run goes on (larger contexts of that model
at the same or larger micro-batch tokens are skipped as OOM).

    python bench/train_step.py --out bench/results/train_step.json
    python bench/train_step.py --models prot_xlstm_26m,transformer_26m --contexts 2048,131072 --profile
    python bench/train_step.py --models protein_tiny,transformer_protein_tiny --contexts 64,128 \\
        --tokens-per-step 256 --steps 1 --warmup 1       # CPU smoke run (numbers mean nothing)

Model names: a run config configs/<name>.yaml (prot_xlstm_102m, prot_xlstm_26m), a model preset
configs/models/<name>.yaml (protein_tiny), or transformer_<x>: the Transformer++ matched in
parameter count to prot_xlstm_<x> (transformer_102m) or to the model <x>.

This file is the command line and the loop over contexts; the models and their batches are in
bench/step_models.py, the engine and the step in bench/step_engine.py, the timers in
bench/step_timing.py, the profile in bench/step_profile.py, the report in bench/step_report.py.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.step_engine import (  # noqa: E402
    build_bench_engine, is_out_of_memory, make_step, release_engine, single_process_parallel, synthetic_batches,
)
from bench.step_models import ModelSpec, plan_batch, resolve_model  # noqa: E402
from bench.step_report import environment, format_markdown, row_summary, write_atomic  # noqa: E402
from bench.step_timing import measure_matmul_ceiling, time_calls  # noqa: E402

DEFAULT_MODELS = "prot_xlstm_102m,transformer_102m,prot_xlstm_26m"
DEFAULT_CONTEXTS = "2048,8192,32768,65536,131072,262144"
DEFAULT_TOKENS_PER_STEP = 2 ** 18          # per replica in configs/prot_xlstm_*.yaml
DATASHEET_BF16_TFLOPS = 989.0              # H100 / H200 SXM dense bf16
GPU_CEILING_SIZES = (4096, 8192, 16384)
CPU_CEILING_SIZES = (256,)


# ------------------------------------------------------------------------------ one model
def new_row(spec: ModelSpec, context_len: int, micro_batch: int, grad_accum: int, host_path: str) -> dict:
    """A result row before measuring: the plan, and None for every number not measured yet."""
    return dict(model=spec.name, family=spec.family, params=spec.params, context_len=context_len,
                micro_batch=micro_batch, grad_accum=grad_accum, tokens_per_step=micro_batch * grad_accum * context_len,
                activation_checkpointing=spec.activation_checkpointing,
                flops_per_token=spec.flops_per_token(context_len), status="ok", step_ms=None,
                step_ms_all=None, tokens_per_s=None, model_tflops=None, mfu=None, mfu_datasheet=None,
                peak_memory_gib=None, static_memory_gib=None, loss_per_token=None, host_path=host_path)


def record_throughput(row: dict, seconds: list[float], ceiling: dict, datasheet_tflops: Optional[float]) -> None:
    """Step time (median), tokens/s, model TFLOP/s and MFU from the timed steps' seconds."""
    step_s = statistics.median(seconds)
    row.update(step_ms=1e3 * step_s, step_ms_all=[1e3 * s for s in seconds],
               tokens_per_s=row["tokens_per_step"] / step_s)
    row["model_tflops"] = row["flops_per_token"] * row["tokens_per_s"] / 1e12
    row["mfu"] = row["model_tflops"] / ceiling["tflops"]
    if datasheet_tflops is not None:
        row["mfu_datasheet"] = row["model_tflops"] / datasheet_tflops


def bench_model(spec: ModelSpec, args, parallel, device, ceiling: dict, deadline: Optional[float],
                rows: list, on_row: Callable = lambda: None):
    """Append one row per context to `rows` (calling `on_row` after each); returns the profile."""
    import torch

    from bench.step_profile import format_profile_markdown, labelled_mlstm_cell, profile_step
    from pretrain.engine import set_stage_batch

    on_cuda = device.type == "cuda"
    profile, engine = None, None
    oom_at = None                                      # (context, micro-batch tokens) of an OOM
    for context_len in args.contexts:
        mb, ga = plan_batch(context_len, args.tokens_per_step, spec.stages, args.max_micro_batch, args.micro_batch)
        tokens = mb * ga * context_len
        row = new_row(spec, context_len, mb, ga, "trainer" if args.trainer_host_path else "device")
        rows.append(row)
        if oom_at is not None and context_len >= oom_at[0] and mb * context_len >= oom_at[1]:
            row["status"] = f"OOM (skipped: OOM at context {oom_at[0]} with no more tokens per micro-batch)"
            on_row()
            continue
        if deadline is not None and time.monotonic() > deadline:
            row["status"] = "skipped (time budget)"
            on_row()
            continue
        print(f"[train_step] {spec.name} context {context_len}: micro-batch {mb} x {ga}", flush=True)
        try:
            if engine is None:
                engine = build_bench_engine(spec, args, parallel, mb, ga, device)
            set_stage_batch(engine, mb, ga, parallel.dp_size)
            batches = synthetic_batches(spec.vocab_size, mb, ga, context_len,
                                        "cpu" if args.trainer_host_path else engine.device, seed=context_len,
                                        document_len=args.document_len)
            step = make_step(engine, batches, tokens, args.trainer_host_path, model_inputs=spec.family == "xlstm")
            if on_cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                row["static_memory_gib"] = torch.cuda.memory_allocated() / 2 ** 30
            for _ in range(args.warmup):
                step()
            losses = []
            seconds = time_calls(lambda: losses.append(step()), args.steps, engine.device)
            row["loss_per_token"] = float(losses[-1]) / tokens
            if on_cuda:
                row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
            record_throughput(row, seconds, ceiling, args.datasheet_tflops if on_cuda else None)
            if args.profile and context_len == args.profile_context and profile is None:
                with labelled_mlstm_cell():
                    profile = profile_step(step, engine.device)
                profile["markdown"] = format_profile_markdown(spec.name, context_len, profile, profile.get("step_ms"))
        except Exception as error:  # noqa: BLE001 - one failing context is recorded, the rest go on
            if not is_out_of_memory(error):
                if args.raise_errors:
                    raise
                row["status"] = f"error: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
            else:
                row["status"] = "OOM"
                oom_at = (context_len, mb * context_len)
            engine = release_engine(engine)            # rebuilt for the next context
        finally:
            batches = step = None
        print(f"[train_step]   -> {row_summary(row)}", flush=True)
        on_row()
    release_engine(engine)                             # the next model's peak memory starts clean
    return profile


# ------------------------------------------------------------------------------ entry
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="See the module docstring (python -m pydoc bench/train_step.py) for "
                                            "what each number means.")
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated (default {DEFAULT_MODELS})")
    parser.add_argument("--contexts", default=DEFAULT_CONTEXTS, help=f"comma-separated context lengths "
                                                                     f"(default {DEFAULT_CONTEXTS})")
    parser.add_argument("--tokens-per-step", type=int, default=DEFAULT_TOKENS_PER_STEP,
                        help="tokens per optimizer step, held constant across contexts (default 2^18)")
    parser.add_argument("--micro-batch", type=int, help="force this micro-batch (default: the run config's "
                                                        "curriculum stage, else min(tokens / S, --max-micro-batch))")
    parser.add_argument("--max-micro-batch", type=int, default=16, help="cap when no stage says (default 16)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per context (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (compilation, allocator)")
    parser.add_argument("--zero-stage", type=int, default=1, choices=(0, 1, 2, 3), help="DeepSpeed ZeRO stage")
    parser.add_argument("--activation-checkpointing", choices=("config", "on", "off"), default="config",
                        help="per-block recomputation: as the run config says (default), or force it")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one step per model at --profile-context (torch.profiler)")
    parser.add_argument("--profile-context", type=int, help="context to profile (default: the shortest)")
    parser.add_argument("--datasheet-tflops", type=float, default=DATASHEET_BF16_TFLOPS,
                        help="peak for the second MFU column (default 989, H100/H200 SXM dense bf16)")
    parser.add_argument("--ceiling-sizes", help="square matmul sizes for the measured ceiling "
                                                "(default 4096,8192,16384 on GPU, 256 on CPU)")
    parser.add_argument("--time-budget-s", type=float, help="skip contexts that would start after this many "
                                                            "seconds (recorded as skipped)")
    parser.add_argument("--trainer-host-path", action="store_true",
                        help="also do pretrain/train.py's host work in the step: batches copied from host "
                             "memory per micro-batch, loss tokens counted on the host, loss and grad norm "
                             "read once per step; compare with a default run to see their cost")
    parser.add_argument("--document-len", type=int, default=1536, metavar="N",
                        help="xLSTM rows are packed with documents of N tokens, with the position ids and "
                             "document starts (state resets) the trainer passes (default 1536, about a "
                             "homology cluster at 2^11; 0 = one document per row, still with its start); "
                             "the Transformer baseline gets the ids only")
    parser.add_argument("--raise-errors", action="store_true", help="stop at a non-OOM error instead of recording it")
    parser.add_argument("--out", help="write JSON here and a Markdown table next to it (.md)")
    parser.add_argument("--force", action="store_true", help="allow --out to replace existing files")
    args = parser.parse_args(argv)
    try:
        args.contexts = [int(c) for c in args.contexts.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--contexts: expected comma-separated integers, got {args.contexts!r}")
    if not args.contexts or min(args.contexts) < 1:
        parser.error("--contexts: give at least one positive context length")
    args.contexts = sorted(set(args.contexts))
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.steps < 1 or args.warmup < 0 or args.tokens_per_step < 1:
        parser.error("--steps must be >= 1, --warmup >= 0, --tokens-per-step >= 1")
    if args.profile_context is None:
        args.profile_context = args.contexts[0]
    elif args.profile_context not in args.contexts:
        parser.error(f"--profile-context {args.profile_context} is not one of --contexts {args.contexts}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out) if args.out else None
    if out is not None and not args.force:
        existing = [p for p in (out, out.with_suffix(".md")) if p.exists()]
        if existing:
            print(f"error: {', '.join(map(str, existing))} exists; pass --force to replace or choose another --out",
                  file=sys.stderr)
            return 2
    os.environ.setdefault("LOCAL_RANK", "0")                 # DeepSpeed asserts it in one process
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        print("[train_step] no CUDA device: running on CPU in fp32 (a smoke run; the numbers mean nothing)",
              flush=True)
    try:
        specs = {name: resolve_model(name, args.activation_checkpointing) for name in args.models}
    except Exception as error:  # noqa: BLE001
        if getattr(error, "user_facing", False):
            print(f"error: {error}", file=sys.stderr)
            return 2
        raise
    start = time.monotonic()
    deadline = start + args.time_budget_s if args.time_budget_s else None
    parallel = single_process_parallel()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    sizes = ([int(s) for s in args.ceiling_sizes.split(",")] if args.ceiling_sizes
             else GPU_CEILING_SIZES if device.type == "cuda" else CPU_CEILING_SIZES)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ceiling = measure_matmul_ceiling(device, dtype, sizes, reps=10 if device.type == "cuda" else 3)
    print(f"[train_step] matmul ceiling {ceiling['tflops']:.2f} TFLOP/s ({ceiling['dtype']} {ceiling['size']}^2)",
          flush=True)
    meta = environment(device, ceiling, args)
    meta["models"] = {name: dict(family=s.family, description=s.description, params=s.params,
                                 activation_checkpointing=s.activation_checkpointing, matched_to=s.matched_to)
                      for name, s in specs.items()}
    rows, profiles = [], {}

    def write_outputs():
        """After every context, so a run cut short by a time limit still leaves its results."""
        meta["elapsed_s"] = time.monotonic() - start
        if out is not None:
            write_atomic(out, json.dumps(dict(meta=meta, results=rows, profiles=profiles), indent=2))
            write_atomic(out.with_suffix(".md"), format_markdown(meta, rows, specs, profiles) + "\n")

    for name, spec in specs.items():
        profile = bench_model(spec, args, parallel, device, ceiling, deadline, rows, write_outputs)
        if profile is not None:
            profiles[name] = dict(profile, context_len=args.profile_context)
    write_outputs()
    print(format_markdown(meta, rows, specs, profiles))
    if out is not None:
        print(f"[train_step] wrote {out} and {out.with_suffix('.md')} in {meta['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
