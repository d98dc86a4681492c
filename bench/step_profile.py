"""Where the time of one training step goes: torch.profiler events grouped into categories.

Each unit of work (a GPU kernel on CUDA, an op's self CPU time on CPU) is put in one category:

    communication       collectives (c10d / NCCL), which DeepSpeed issues even on one rank
    optimizer           anything else under the "bench/optimizer_step" range (DeepSpeed's
                        engine.step: grad norm, clipping, AdamW, fp32 -> bf16 copies)
    mLSTM kernels       under the "bench/mlstm_cell" range (the train_step bench wraps the cell
                        call), or named like the Triton kernels / their autograd node
    attention           SDPA / flash attention ops and kernels
    loss                cross-entropy (log-softmax, NLL)
    norms, conv,        decided by the op that launched the work and the aten ops around it
    matmul projections  (aten::mm under aten::linear, native_layer_norm, convolution, ...)
    other               elementwise (RoPE, SiLU, gates, residual adds), embedding, copies

Only the op chain up to the first autograd node counts: with activation checkpointing, forward
ops recomputed in the backward sit under whichever backward node unpacked them, and that node
says nothing about them. On CPU the mLSTM cell's backward (torch backend, plain aten ops) lands
in matmul / other; on CUDA the Triton backward is one autograd node and is found by name.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict

OPTIMIZER_RANGE = "bench/optimizer_step"
FORWARD_RANGE = "bench/forward"
BACKWARD_RANGE = "bench/backward"
MLSTM_RANGE = "bench/mlstm_cell"
CONV_RANGE = "bench/causal_conv"          # the conv of packed rows is elementwise ops, not aten conv
CATEGORIES = ("mLSTM kernels", "attention", "matmul projections", "norms", "conv", "loss", "optimizer",
              "communication", "other")

_COMMUNICATION_PATTERNS = ("c10d::", "nccl", "allreduce", "all_reduce", "reduce_scatter", "all_gather",
                           "allgather", "broadcast")
# Matched on the kernel name and every op up to the first autograd node (containers).
_CONTAINER_PATTERNS = (
    ("mLSTM kernels", (MLSTM_RANGE, "mlstm", "_chunk_states_kernel", "_chunk_outputs_kernel",
                       "_chunk_state_grads_kernel", "_chunk_dqk_kernel", "_chunk_dv_kernel")),
    ("attention", ("scaled_dot_product", "flash_attention", "flash_fwd", "flash_bwd", "fmha",
                   "efficient_attention", "cudnn_attention")),
    ("conv", (CONV_RANGE,)),
)
# Matched on the kernel name and the innermost run of aten ops (leaves).
_LEAF_PATTERNS = (
    ("loss", ("nll_loss", "nllloss", "log_softmax", "logsoftmax", "cross_entropy")),
    ("norms", ("layer_norm", "layernorm", "rms_norm", "rmsnorm", "group_norm")),
    ("conv", ("conv",)),
    ("matmul projections", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul",
                            "aten::linear", "aten::einsum", "gemm", "mmbackward")),
)


def _chain(event) -> list[str]:
    names = []
    while event is not None:
        names.append(event.name)
        event = event.cpu_parent
    return names


def categorize(chain: list[str], kernel_name: str | None = None) -> str:
    """Category of work launched by the op `chain[0]` (its parents follow, innermost first)."""
    names = ([kernel_name] if kernel_name else []) + chain
    if any(p in name.lower() for name in names for p in _COMMUNICATION_PATTERNS):
        return "communication"
    if any(OPTIMIZER_RANGE in name for name in chain):
        return "optimizer"
    upto_node = []
    for name in chain:
        upto_node.append(name)
        if "Backward" in name or name.startswith("autograd::"):
            break
    container_names = ([kernel_name] if kernel_name else []) + upto_node
    for category, patterns in _CONTAINER_PATTERNS:
        if any(p.lower() in name.lower() for name in container_names for p in patterns):
            return category
    aten_run = []
    for name in upto_node:
        if not name.startswith("aten::"):
            break
        aten_run.append(name)
    leaf_names = ([kernel_name] if kernel_name else []) + (aten_run or upto_node[:1])
    for category, patterns in _LEAF_PATTERNS:
        if any(p.lower() in name.lower() for name in leaf_names for p in patterns):
            return category
    return "other"


def summarize(events, on_cuda: bool, top: int = 15) -> dict:
    """Milliseconds per category and the top ops of a profiled step.

    `events`: `prof.events()` of a torch.profiler run. On CUDA the time is device (kernel) time
    attributed to the op that launched it; on CPU it is each op's self CPU time."""
    per_category = defaultdict(float)
    per_op = defaultdict(float)                     # (op, category) -> ms
    phases = defaultdict(float)
    for event in events:
        if event.name in (FORWARD_RANGE, BACKWARD_RANGE, OPTIMIZER_RANGE):
            phases[event.name] += event.cpu_time_total / 1e3
        chain = _chain(event)
        if on_cuda:
            work = [(kernel.name, kernel.duration) for kernel in event.kernels]
        else:
            work = [(None, event.self_cpu_time_total)]
        for kernel_name, micros in work:
            if micros <= 0:
                continue
            category = categorize(chain, kernel_name)
            per_category[category] += micros / 1e3
            per_op[(event.name, category)] += micros / 1e3
    total = sum(per_category.values())
    ops = sorted(per_op.items(), key=lambda item: -item[1])[:top]
    return {
        "time_kind": "device (kernel) time" if on_cuda else "self CPU time",
        "total_ms": total,
        "categories_ms": {category: per_category.get(category, 0.0) for category in CATEGORIES},
        "host_phases_ms": {name.split("/")[-1]: ms for name, ms in phases.items()},
        "top_ops": [{"op": name, "ms": ms, "category": category} for (name, category), ms in ops],
    }


def profile_step(step, device) -> dict:
    """`summarize` of one call of `step` under torch.profiler, with its wall time as step_ms."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall_ms = 1e3 * (time.perf_counter() - start)
    summary = summarize(prof.events(), on_cuda=device.type == "cuda")
    summary["step_ms"] = wall_ms
    return summary


@contextlib.contextmanager
def labelled_mlstm_cell():
    """Put every call of `kernels.mlstm_chunkwise` under the MLSTM_RANGE profiler range, and
    every causal conv under CONV_RANGE.

    The mLSTM block looks the function up in `kernels` at call time, so replacing the module
    attribute for the duration of the profiled step labels exactly the cell (also when it is
    recomputed by activation checkpointing); the conv's forward is replaced on its class."""
    import torch

    import kernels
    from modeling.layers import CausalDepthwiseConv

    original, conv_forward = kernels.mlstm_chunkwise, CausalDepthwiseConv.forward

    def labelled(*args, **kwargs):
        with torch.profiler.record_function(MLSTM_RANGE):
            return original(*args, **kwargs)

    def labelled_conv(self, *args, **kwargs):
        with torch.profiler.record_function(CONV_RANGE):
            return conv_forward(self, *args, **kwargs)

    kernels.mlstm_chunkwise, CausalDepthwiseConv.forward = labelled, labelled_conv
    try:
        yield
    finally:
        kernels.mlstm_chunkwise, CausalDepthwiseConv.forward = original, conv_forward


def format_profile_markdown(name: str, context_len: int, summary: dict, step_ms: float | None) -> str:
    total = summary["total_ms"] or 1.0
    lines = [f"#### {name}, context {context_len} ({summary['time_kind']}, one step)", ""]
    if step_ms is not None:
        lines.append(f"Profiled step wall time {step_ms:.1f} ms; {summary['time_kind']} accounted "
                     f"{summary['total_ms']:.1f} ms ({100 * summary['total_ms'] / step_ms:.0f}% of the wall time).")
        lines.append("")
    lines += ["| category | ms | share |", "|---|---:|---:|"]
    for category, ms in sorted(summary["categories_ms"].items(), key=lambda item: -item[1]):
        lines.append(f"| {category} | {ms:.2f} | {100 * ms / total:.1f}% |")
    if summary["host_phases_ms"]:
        phases = ", ".join(f"{phase} {ms:.1f} ms" for phase, ms in summary["host_phases_ms"].items())
        lines += ["", f"Host time in the step's phases: {phases}."]
    lines += ["", "| top op | ms | category |", "|---|---:|---|"]
    for row in summary["top_ops"]:
        lines.append(f"| `{row['op'][:80]}` | {row['ms']:.2f} | {row['category']} |")
    return "\n".join(lines)
