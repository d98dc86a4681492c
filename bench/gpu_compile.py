"""What the GPU compiler makes of the Triton mLSTM kernels, on a machine without a GPU.

For each shipped model config, the public kernel function (`kernels.mlstm_chunkwise`, called as
modeling's mLSTM block calls it, forward + backward, bf16 q, k, v and fp32 gates) runs on "meta"
tensors while `JITFunction.run` is replaced by a recorder: every launch's grid, arguments and
constexprs are captured at the real shapes and nothing executes. Shapes: every curriculum stage
(micro-batch x context) of the run config configs/<model>.yaml, or (1, 2048) for a preset
without one; segments as `segments="auto"` picks them on a GPU with --sm-count SMs (H100: 132).
The JIT's own binder (`create_function_from_signature`, `_pack_args`) turns each launch into
the signature, constexprs and alignment attributes the JIT would compile, and each distinct one
is compiled with `triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))` for
sm_80 (A100) and sm_90 (H100), each from launches captured with that arch's kernel settings
(kernels/mlstm/tiling.py). Per kernel it reports:

    shared       metadata.shared against the opt-in limit per block (A100 163 KiB, H100 227 KiB)
    regs, spill  from the ptxas -v log of the same compile (spill stores + loads, bytes)
    dots         every tl.dot as lowered in the ttgir: wgmma (ttng.warp_group_dot), mma.sync
                 (nvidia_mma v2) or fma, with the operand type (bf16, f16, tf32, f32)

and per model the bytes handed to the kernels per token of one forward+backward (the sum over
launches of the bytes of every tensor argument, each counted once per launch) against the
floor of q, k, v, h read or written once forward and q, k, v, h, dh, dq, dk, dv once backward;
and the memory of one mLSTM layer's kernel call at micro-batch 1: tensors saved for backward
beyond the layer's inputs, and the kernel buffers allocated in forward and backward, with the
segments of segments="auto" and without segments (P = 1: the kernels alone).

    python bench/gpu_compile.py                                   # every shipped model, sm_80 + sm_90
    python bench/gpu_compile.py --models prot_xlstm_26m,prot_xlstm_102m --archs 90 --check
    python bench/gpu_compile.py --memory-contexts 131072,262144 --json bench/results/gpu_compile.json
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHARED_LIMIT = {80: 166912, 90: 232448}        # cudaDevAttrMaxSharedMemoryPerBlockOptin
GPU_NAME = {80: "A100", 90: "H100"}
DEFAULT_SHAPE = [(1, 2048)]


@dataclass
class Launch:
    kernel: object              # triton JITFunction
    grid: tuple
    args: tuple
    kwargs: dict


@dataclass
class Workload:
    model: str
    batch: int
    context: int
    heads: int
    head_dim: int
    chunk_size: object
    segments: int
    launches: list = field(default_factory=list)
    saved_bytes: int = 0        # saved for backward, beyond the call's inputs
    forward_buffer_bytes: int = 0
    backward_buffer_bytes: int = 0


@contextlib.contextmanager
def capture_launches(launches: list):
    """Record every Triton launch instead of running it (no GPU needed)."""
    from triton.runtime.jit import JITFunction

    original = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(self, grid, args, kwargs))
        return None

    JITFunction.run = record
    try:
        yield launches
    finally:
        JITFunction.run = original


def gpu_segments(B, H, S, chunk_size, sm_count):
    """The segment count `segments="auto"` picks on a CUDA device with `sm_count` SMs."""
    import torch

    import kernels

    class Properties:
        multi_processor_count = sm_count

    original = torch.cuda.get_device_properties
    torch.cuda.get_device_properties = lambda device=None: Properties()
    try:
        return kernels.choose_num_segments(B, H, S, chunk_size, torch.device("cuda", 0))
    finally:
        torch.cuda.get_device_properties = original


def chunk_size_of(chunk_size, head_dim, S):
    """The int chunk size the kernels use for a model's `chunk_size` ("auto" or an int)."""
    try:
        from kernels.mlstm.chunking import resolve_chunk_size
    except ImportError:                     # kernels before the chunk-size rule (v1): ints only
        return chunk_size
    return resolve_chunk_size(chunk_size, head_dim, head_dim, S)


def _storage_key(t):
    return (t.untyped_storage()._cdata, t.storage_offset(), tuple(t.shape), tuple(t.stride()))


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


@contextlib.contextmanager
def target_capability(capability):
    """Launches captured on meta tensors get the kernel settings of this compute capability."""
    try:
        from kernels.mlstm import tiling
    except ImportError:
        yield
        return
    previous = getattr(tiling, "DEFAULT_CAPABILITY", None)
    tiling.DEFAULT_CAPABILITY = capability
    try:
        yield
    finally:
        tiling.DEFAULT_CAPABILITY = previous


def run_workload(model, cfg, B, S, sm_count, segments=None, capability=90) -> Workload:
    """One mLSTM layer's kernel call, forward and backward, on meta tensors, launches captured with
    the kernel settings of compute `capability`; `segments` None: what segments="auto" picks on the GPU."""
    with target_capability(capability):
        return _run_workload(model, cfg, B, S, sm_count, segments)


def _run_workload(model, cfg, B, S, sm_count, segments) -> Workload:
    import torch

    import kernels

    H = cfg.num_heads
    D = cfg.inner_dim // H
    L = chunk_size_of(cfg.chunk_size, D, S)
    P = gpu_segments(B, H, S, L, sm_count) if segments is None else segments
    work = Workload(model, B, S, H, D, cfg.chunk_size, P)
    meta = dict(device="meta", requires_grad=True)
    q, k, v = (torch.empty(B, H, S, D, dtype=torch.bfloat16, **meta) for _ in range(3))
    i, f = (torch.empty(B, H, S, dtype=torch.float32, **meta) for _ in range(2))
    inputs = {_storage_key(x) for x in (q, k, v, i, f)}
    saved = {}

    def pack(t):
        key = _storage_key(t)
        if key not in inputs:
            saved[key] = _nbytes(t)
        return t

    with capture_launches(work.launches):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            h = kernels.mlstm_chunkwise(q, k, v, i, f, chunk_size=cfg.chunk_size, backend="triton", segments=P)
        forward_launches = len(work.launches)
        dh = torch.empty_like(h)
        h.backward(dh)
    work.saved_bytes = sum(saved.values())
    inputs.add(_storage_key(dh))
    for phase, launches in (("forward", work.launches[:forward_launches]),
                            ("backward", work.launches[forward_launches:])):
        buffers = {}
        for launch in launches:
            for arg in launch.args:
                if isinstance(arg, torch.Tensor) and _storage_key(arg) not in inputs | set(saved):
                    buffers[arg.untyped_storage()._cdata] = arg.untyped_storage().nbytes()
        setattr(work, f"{phase}_buffer_bytes", sum(buffers.values()))
    return work


def bytes_handed(work: Workload) -> int:
    """Bytes of the tensor arguments of every launch, each tensor once per launch."""
    import torch

    total = 0
    for launch in work.launches:
        seen = set()
        for arg in launch.args:
            if isinstance(arg, torch.Tensor) and _storage_key(arg) not in seen:
                seen.add(_storage_key(arg))
                total += _nbytes(arg)
    return total


def floor_bytes(work: Workload) -> int:
    """q, k, v, h once forward; q, k, v, h, dh, dq, dk, dv once backward (bf16)."""
    per_token = 2 * work.heads * (6 * work.head_dim + 6 * work.head_dim)
    return per_token * work.batch * work.context


# ------------------------------------------------------------------------------ compiling
def jit_source(launch: Launch, target):
    """The ASTSource and options the JIT would build for this launch on `target`."""
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = launch.kernel
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, launch.kwargs, bound_args, specialization, options)
    return ASTSource(fn, signature, constexprs, attrs), options


_INPUT_PRECISION = {"0": "tf32", "1": "tf32x3", "2": "ieee"}


def classify_dots(ttgir: str):
    """Each tl.dot of the ttgir as (kind, operand type): wgmma / mma.sync / fma and bf16 / f16 /
    tf32 / f32 (fp32 operands: tf32 on tensor cores, f32 on FMA)."""
    layouts = dict(re.findall(r"^(#\w+) = #ttg\.nvidia_mma<\{versionMajor = (\d)", ttgir, flags=re.M))
    dots = []
    for line in ttgir.splitlines():
        match = re.search(r"= (ttng\.warp_group_dot|tt\.dot) ", line)
        if not match:
            continue
        operand = re.search(r" : \S*?<(?:\d+x)+(\w+?)[,>]", line).group(1)
        if match.group(1) == "ttng.warp_group_dot":
            kind = "wgmma"
        else:
            result = re.search(r"-> tensor<[^,]+, (#\w+)", line)
            version = layouts.get(result.group(1)) if result else None
            kind = {"2": "mma.sync", "3": "wgmma"}.get(version, "fma")
        if operand == "f32":
            precision = re.search(r"inputPrecision = (\d)", line)
            operand = _INPUT_PRECISION.get(precision.group(1), "f32") if precision else "tf32"
            if kind == "fma":
                operand = "f32"
        dots.append((kind, operand))
    return dots


@dataclass
class CompileResult:
    kernel: str
    arch: int
    ok: bool
    error: str = ""
    shared: int = 0
    registers: int = 0
    spill_bytes: int = 0
    dots: list = field(default_factory=list)
    num_warps: int = 0
    num_stages: int = 0
    constexprs: dict = field(default_factory=dict)

    @property
    def shared_ok(self):
        return self.ok and self.shared <= SHARED_LIMIT[self.arch]


def compile_launch(launch: Launch, arch: int) -> CompileResult:
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", arch, 32)
    name = launch.kernel.__name__
    src, options = jit_source(launch, target)
    constexprs = {launch.kernel.arg_names[path[0]]: str(value) for path, value in src.constants.items()}
    result = CompileResult(name, arch, ok=False, num_warps=options.num_warps, num_stages=options.num_stages,
                           constexprs=constexprs)
    log = io.StringIO()
    previous = knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile
    knobs.nvidia.dump_ptxas_log = True          # ptxas -v output: registers and spills
    knobs.compilation.always_compile = True     # a cache hit would run no ptxas, so print no log
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=target, options=options.__dict__)
    except Exception as exc:          # a kernel that does not compile is a finding, not a crash
        result.error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        return result
    finally:
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = previous
    text = log.getvalue()
    result.ok = True
    result.shared = compiled.metadata.shared
    registers = re.findall(r"Used (\d+) registers", text)
    result.registers = max(int(x) for x in registers) if registers else -1
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    result.spill_bytes = sum(int(a) + int(b) for a, b in spills)
    result.dots = classify_dots(compiled.asm["ttgir"])
    return result


def distinct_launches(workloads):
    """One launch per distinct JIT specialization (kernel, signature, constexprs, attrs, options),
    with the names of the models that make it."""
    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", 90, 32)
    distinct = {}
    for work in workloads:
        for launch in work.launches:
            src, options = jit_source(launch, target)
            key = (launch.kernel.__name__, repr(sorted(src.signature.items())), repr(sorted(src.constants.items())),
                   repr(sorted(src.attrs.items())), options.num_warps, options.num_stages)
            _, models = distinct.setdefault(key, (launch, []))
            if work.model not in models:
                models.append(work.model)
    return list(distinct.values())


# ------------------------------------------------------------------------------ workloads
def model_shapes(name):
    """(ModelConfig, [(micro-batch, context), ...]) of a shipped model."""
    from modeling.presets import load_model_config

    run_config = REPO / "configs" / f"{name}.yaml"
    if run_config.is_file():
        from pretrain.config import load_run_config

        rc = load_run_config(run_config)
        return rc.model, [(s.micro_batch_size, s.context_len) for s in rc.curriculum.stages]
    return load_model_config(name), DEFAULT_SHAPE


def shipped_models():
    return sorted(p.stem for p in (REPO / "configs" / "models").glob("*.yaml"))


def build_workloads(models, sm_count, contexts=None, segment_choices=(None,), capability=90):
    workloads = []
    for name in models:
        cfg, shapes = model_shapes(name)
        if contexts:
            shapes = [(1, S) for S in contexts]
        for B, S in shapes:
            for segments in segment_choices:
                workloads.append(run_workload(name, cfg, B, S, sm_count, segments, capability))
    return workloads


# ------------------------------------------------------------------------------ report
def _dots_text(dots):
    counts = {}
    for dot in dots:
        counts[dot] = counts.get(dot, 0) + 1
    return ", ".join(f"{n}x {kind} {op}" for (kind, op), n in sorted(counts.items()))


def check_results(results):
    """Problems the CI gate fails on: compile errors, shared memory over the limit, spills,
    and any dot of these bf16 calls not on bf16 tensor cores."""
    problems = []
    for r in results:
        where = f"{r.kernel} sm_{r.arch} {r.constexprs}"
        if not r.ok:
            problems.append(f"{where}: does not compile: {r.error}")
            continue
        if not r.shared_ok:
            problems.append(f"{where}: shared memory {r.shared} > limit {SHARED_LIMIT[r.arch]}")
        if r.spill_bytes:
            problems.append(f"{where}: {r.spill_bytes} bytes of register spills")
        tensor_core = "wgmma" if r.arch >= 90 else "mma.sync"
        bad = [d for d in r.dots if d != (tensor_core, "bf16")]
        if bad:
            problems.append(f"{where}: dots not on bf16 {tensor_core}: {_dots_text(bad)}")
    return problems


def summarize(rows):
    """One line per (kernel, model, arch) over its distinct specializations: the largest shared
    memory, registers and spills, and the dots (the same in every specialization)."""
    groups = {}
    for r, models in rows:
        groups.setdefault((r.kernel, models, r.arch), []).append(r)
    summary = []
    for (kernel, model, arch), results in groups.items():
        first = results[0]
        chunk = int(first.constexprs.get("TPC", 1)) * int(first.constexprs.get("T", 0)) or "-"
        summary.append(dict(
            kernel=kernel, model=model, arch=arch, specializations=len(results), chunk=chunk,
            ok=all(r.ok for r in results), error=next((r.error for r in results if not r.ok), ""),
            shared=max(r.shared for r in results), registers=max(r.registers for r in results),
            spill_bytes=max(r.spill_bytes for r in results), num_warps=first.num_warps,
            num_stages=first.num_stages, dots=_dots_text(first.dots),
        ))
    return summary


def format_compile_table(summary):
    header = (f"{'kernel':<26} {'models':<16} {'L':>5} {'arch':>5} {'spec':>4} {'warps':>5} {'stages':>6} "
              f"{'shared KiB':>11} {'regs':>4} {'spill B':>7}  dots")
    lines = [header, "-" * len(header)]
    for s in summary:
        shared = f"{s['shared'] / 1024:.0f}/{SHARED_LIMIT[s['arch']] / 1024:.0f}" if s["ok"] else "FAILED"
        models = s["model"] if len(s["model"]) <= 16 else s["model"].split(",")[0][:13] + "+.."
        lines.append(f"{s['kernel']:<26} {models:<16} {s['chunk']:>5} {'sm_' + str(s['arch']):>5} "
                     f"{s['specializations']:>4} {s['num_warps']:>5} {s['num_stages']:>6} {shared:>11} "
                     f"{s['registers']:>4} {s['spill_bytes']:>7}  {s['dots'] if s['ok'] else s['error'][:80]}")
    return "\n".join(lines)


def format_bytes_table(workloads):
    header = (f"{'model':<26} {'B':>3} {'S':>7} {'H':>2} {'D':>4} {'L':>5} {'P':>3} "
              f"{'KiB/token':>10} {'floor':>7} {'ratio':>6}")
    lines = [header, "-" * len(header)]
    for w in workloads:
        tokens = w.batch * w.context
        L = chunk_size_of(w.chunk_size, w.head_dim, w.context)
        handed, floor = bytes_handed(w) / tokens, floor_bytes(w) / tokens
        lines.append(f"{w.model:<26} {w.batch:>3} {w.context:>7} {w.heads:>2} {w.head_dim:>4} {L:>5} "
                     f"{w.segments:>3} {handed / 1024:>10.1f} {floor / 1024:>7.1f} {handed / floor:>6.2f}")
    return "\n".join(lines)


def format_memory_table(workloads):
    header = (f"{'model':<18} {'S':>7} {'P':>3} {'saved MiB':>10} {'fwd buffers MiB':>16} "
              f"{'bwd buffers MiB':>16} {'q,k,v,h MiB':>12}")
    lines = [header, "-" * len(header)]
    for w in workloads:
        activations = 4 * 2 * w.batch * w.heads * w.context * w.head_dim
        lines.append(f"{w.model:<18} {w.context:>7} {w.segments:>3} {w.saved_bytes / 2**20:>10.1f} "
                     f"{w.forward_buffer_bytes / 2**20:>16.1f} {w.backward_buffer_bytes / 2**20:>16.1f} "
                     f"{activations / 2**20:>12.1f}")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Compile the Triton mLSTM kernels for sm_80/sm_90 at the "
                                                 "shipped models' launches, without a GPU.")
    parser.add_argument("--models", help="comma-separated model names (configs/models/<name>.yaml; the run "
                                         "config configs/<name>.yaml gives the shapes); default: all shipped")
    parser.add_argument("--archs", default="80,90", help="compute capabilities (default 80,90)")
    parser.add_argument("--sm-count", type=int, default=132, help="SMs of the GPU whose segments='auto' "
                                                                  "choice is mimicked (default 132, H100 SXM)")
    parser.add_argument("--memory-models", default="prot_xlstm_26m,prot_xlstm_102m",
                        help="models of the memory figure (default the protein ones)")
    parser.add_argument("--memory-contexts", default="131072,262144",
                        help="contexts of the memory figure at micro-batch 1 (default 2^17, 2^18)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 on compile errors, shared memory over the limit, spills, or non-bf16 MMA")
    parser.add_argument("--json", help="also write the results to this JSON file")
    return parser.parse_args(argv)


def main(argv=None):
    os.environ.pop("TRITON_INTERPRET", None)
    args = parse_args(argv)
    import torch
    import triton

    models = args.models.split(",") if args.models else shipped_models()
    archs = [int(a) for a in args.archs.split(",")]
    rows = []
    for arch in archs:              # each arch's launches carry its kernel settings (kernels/mlstm/tiling.py)
        workloads = build_workloads(models, args.sm_count, capability=arch)
        for launch, launch_models in distinct_launches(workloads):
            rows.append((compile_launch(launch, arch), ",".join(launch_models)))
    print(f"# triton {triton.__version__}, torch {torch.__version__}; {len(rows)} compiles of "
          f"{len({r.kernel for r, _ in rows})} kernels for {', '.join(f'sm_{a}' for a in archs)}")
    summary = summarize(rows)
    print(format_compile_table(summary))
    print()
    print(f"# bytes handed to the kernels per token of one forward+backward (bf16, sm_{archs[-1]} settings), "
          f"against the floor")
    print(format_bytes_table(workloads))
    memory = []
    if args.memory_models:
        memory = build_workloads(args.memory_models.split(","), args.sm_count,
                                 [int(s) for s in args.memory_contexts.split(",")], segment_choices=(None, 1))
        print()
        print("# memory of one mLSTM layer's kernel call (micro-batch 1): saved for backward beyond its "
              "inputs, kernel buffers allocated in forward and in backward")
        print(format_memory_table(memory))
    problems = list(dict.fromkeys(check_results([r for r, _ in rows])))
    if args.json:
        payload = dict(
            triton=triton.__version__, torch=torch.__version__,
            kernels=summary,
            compiles=[dict(kernel=r.kernel, models=models.split(","), arch=r.arch, ok=r.ok, error=r.error, shared=r.shared,
                           shared_limit=SHARED_LIMIT[r.arch], registers=r.registers, spill_bytes=r.spill_bytes,
                           dots=r.dots, num_warps=r.num_warps, num_stages=r.num_stages, constexprs=r.constexprs)
                      for r, models in rows],
            bytes_per_token=[dict(model=w.model, batch=w.batch, context=w.context, heads=w.heads,
                                  head_dim=w.head_dim, segments=w.segments,
                                  handed=bytes_handed(w) / (w.batch * w.context),
                                  floor=floor_bytes(w) / (w.batch * w.context)) for w in workloads],
            memory=[dict(model=w.model, context=w.context, segments=w.segments, saved=w.saved_bytes,
                         forward_buffers=w.forward_buffer_bytes, backward_buffers=w.backward_buffer_bytes)
                    for w in memory],
            problems=problems,
        )
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=1))
    if problems:
        print()
        print("# problems")
        print("\n".join(problems))
    return 1 if (args.check and problems) else 0


if __name__ == "__main__":
    sys.exit(main())
