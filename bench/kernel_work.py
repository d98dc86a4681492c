"""The work the Triton mLSTM kernels do per token and head, counted on a machine without a GPU.

One forward + backward of `kernels.mlstm_chunkwise` (bf16 q, k, v, fp32 gates, B = H = 1) runs
under the Triton interpreter with two recorders:

    MMA FLOPs    every tl.dot the kernels execute: the interpreter's `create_dot` is wrapped and
                 adds 2 M N K (times any batch dims) to the kernel whose launch is running
                 (tagged through `InterpretedFunction.run`, by the kernel's __name__)
    bytes handed every tensor argument of every launch, once per launch (the measure of
                 bench/gpu_compile.py)

both per kernel, forward and backward, divided by the tokens. Beside them, in the same run, TFLA
(`mlstm-kernels` 2.0.6, `chunkwise--triton_xl_chunk`, chunk 128) when it is installed: a bench-only
optional dependency, installed apart from the project's environment and never imported by the
package, e.g.

    pip install --no-deps --target /tmp/tfla mlstm-kernels==2.0.6
    python bench/kernel_work.py --tfla-path /tmp/tfla          # (or MLSTM_KERNELS_PATH=/tmp/tfla)

Without it the TFLA columns read "not installed". Also per row:

    minimum   the chunkwise algorithm's own products (docs/INTERFACES.md, kernels section):
              2 Dqk Dv per token for each of the six state products (K^T V, Q C; backward
              Q^T dH, dH C^T, V dC^T, K dC) and 2 Lc (4 Dqk + 3 Dv) for the seven intra-chunk
              ones (S = Q K^T, S V; backward S again, dH V^T, S^T dH, dS K, dS^T Q), Lc = L/2 + T/2
              the mean causal keys per query at sequence-tile granularity (T = min(64, L))
    bound     a roofline from the counts on the H100 SXM datasheet (989 TFLOP/s dense bf16,
              3.35 TB/s): max(FLOPs / peak, bytes / bandwidth) ns per token-head. A bound from
              counts, not a timing; the GPU benchmark (bench/run_all.sh) stays the judge.

    python bench/kernel_work.py                                   # head dims 512, 256, 128, 64
    python bench/kernel_work.py --head-dims 512 --chunks auto,256,512 --context 4096 --per-kernel
    python bench/kernel_work.py --head-dims 512,256 --context 1L --skip-products     # the CI gate's counts

`work_per_token` is also what kernels/mlstm/chunking.py's table of the `auto` chunk was derived
from (`python bench/kernel_work.py --derive-auto`).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

# before triton is imported: the kernels interpret (counting), or compile (--derive-auto: compiles)
if "--derive-auto" in sys.argv:
    os.environ.pop("TRITON_INTERPRET", None)
else:
    os.environ["TRITON_INTERPRET"] = "1"

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PEAK_FLOPS = 989e12            # H100 SXM datasheet, dense bf16
PEAK_BYTES = 3.35e12           # H100 SXM datasheet, HBM3
TFLA_VERSION = "2.0.6"
TFLA_CHUNK = 128


@dataclass
class Work:
    """Counts of one forward + backward, per kernel name: {kernel: [flops, bytes]} per phase."""

    forward: dict = field(default_factory=dict)
    backward: dict = field(default_factory=dict)
    tokens: int = 1

    def total(self, phase=None, index=0):
        phases = [self.forward, self.backward] if phase is None else [getattr(self, phase)]
        return sum(c[index] for p in phases for c in p.values()) / self.tokens

    @property
    def flops(self):
        return self.total(index=0)

    @property
    def bytes(self):
        return self.total(index=1)


@contextlib.contextmanager
def count_kernel_work(sink: dict, multiply=True):
    """While active, every interpreted Triton launch adds its tensor arguments' bytes (each once)
    and the 2 M N K of every tl.dot it executes to sink[kernel name] = [flops, bytes].
    multiply=False skips the products (each dot returns its accumulator): no loop bound or branch
    of the kernels depends on values, so the counts are the same, faster (the CI gate)."""
    import torch
    from triton.runtime import interpreter

    builder_cls = interpreter.InterpreterBuilder
    original_dot, original_run = builder_cls.create_dot, interpreter.InterpretedFunction.run
    running = []

    def create_dot(self, a, b, d, *args, **kwargs):
        *batch, M, K = a.data.shape
        N = b.data.shape[-1]
        count = 2 * M * N * K
        for dim in batch:
            count *= dim
        sink.setdefault(running[-1] if running else "?", [0, 0])[0] += count
        if not multiply:
            return interpreter.TensorHandle(d.data.copy(), d.dtype.scalar)
        return original_dot(self, a, b, d, *args, **kwargs)

    def run(self, *args, grid, warmup, **kwargs):
        name = self.fn.__name__
        seen = set()
        entry = sink.setdefault(name, [0, 0])
        for arg in list(args) + list(kwargs.values()):
            if isinstance(arg, torch.Tensor):
                key = (arg.untyped_storage().data_ptr(), arg.storage_offset(), tuple(arg.shape), tuple(arg.stride()))
                if key not in seen:
                    seen.add(key)
                    entry[1] += arg.numel() * arg.element_size()
        running.append(name)
        try:
            return original_run(self, *args, grid=grid, warmup=warmup, **kwargs)
        finally:
            running.pop()

    builder_cls.create_dot = create_dot
    interpreter.InterpretedFunction.run = run
    try:
        yield sink
    finally:
        builder_cls.create_dot = original_dot
        interpreter.InterpretedFunction.run = original_run


def _inputs(S, Dqk, Dv, dtype, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 1, S, Dqk, generator=g).to(dtype).requires_grad_()
    k = torch.randn(1, 1, S, Dqk, generator=g).to(dtype).requires_grad_()
    v = torch.randn(1, 1, S, Dv, generator=g).to(dtype).requires_grad_()
    i = torch.randn(1, 1, S, generator=g).requires_grad_()
    f = (3.0 + torch.randn(1, 1, S, generator=g)).requires_grad_()
    return q, k, v, i, f


def measure(call, S, Dqk, Dv, dtype="bfloat16", multiply=True) -> Work:
    """Counts of call(q, k, v, i, f) -> h and its backward, per token. The FLOPs do not depend on
    `dtype` (fp32 interprets faster: the CI gate); the bytes are those of that dtype."""
    import torch

    q, k, v, i, f = _inputs(S, Dqk, Dv, getattr(torch, dtype))
    work = Work(tokens=S)
    with count_kernel_work(work.forward, multiply):
        h = call(q, k, v, i, f)
    dh = torch.randn(h.shape, generator=torch.Generator().manual_seed(1)).to(h.dtype)
    with count_kernel_work(work.backward, multiply):
        h.backward(dh)
    return work


def project_work(S, Dqk, Dv, chunk_size, dtype="bfloat16", multiply=True) -> Work:
    import kernels

    return measure(lambda q, k, v, i, f: kernels.mlstm_chunkwise(q, k, v, i, f, chunk_size=chunk_size,
                                                                   backend="triton", segments=1),
                   S, Dqk, Dv, dtype, multiply)


def tfla_available(path=None) -> bool:
    """Put an out-of-environment mlstm-kernels install on sys.path (bench only) and try it."""
    path = path or os.environ.get("MLSTM_KERNELS_PATH")
    if path and path not in sys.path:
        sys.path.append(path)
    try:
        from mlstm_kernels.torch.chunkwise.triton_xl_chunk import mlstm_chunkwise__xl_chunk  # noqa: F401
    except ImportError:
        return False
    return True


def tfla_work(S, Dqk, Dv, chunk_size=TFLA_CHUNK, dtype="bfloat16", multiply=True) -> Work:
    import torch
    from mlstm_kernels.torch.chunkwise.triton_xl_chunk import mlstm_chunkwise__xl_chunk

    return measure(lambda q, k, v, i, f: mlstm_chunkwise__xl_chunk(
        q, k, v, i, f, chunk_size=chunk_size, autocast_kernel_dtype=getattr(torch, dtype)), S, Dqk, Dv, dtype,
        multiply)


def chunkwise_minimum(Dqk, Dv, L) -> float:
    """MMA FLOPs per token-head the chunkwise algorithm needs at chunk L (module docstring)."""
    from kernels.mlstm.tiling import seq_tile

    Lc = L / 2 + seq_tile(L) / 2
    return 12 * Dqk * Dv + 2 * Lc * (4 * Dqk + 3 * Dv)


def project_flops_model(Dqk, Dv, L) -> float:
    """MMA FLOPs per token-head of this project's kernels from their structure (the interpreter's
    count agrees: tests/kernels/test_kernel_work.py): the six state products, and each intra-chunk
    score product once per head tile its kernel's program owns (outputs: Dv tiles; dq: Dqk tiles;
    dkv: its Dqk and Dv tiles), plus the products with V, K, Q, dH once."""
    from kernels.mlstm.tiling import kernel_settings, seq_tile

    def tiles(dim, tile):
        return -(-dim // tile)

    dkv = kernel_settings("dkv", Dqk, Dv)
    score_qk = tiles(Dv, kernel_settings("outputs", Dqk, Dv).BV) + tiles(Dv, dkv.BV)     # Q K^T, K Q^T
    score_dhv = tiles(Dqk, kernel_settings("dq", Dqk, Dv).BK) + tiles(Dqk, dkv.BK)      # dH V^T, V dH^T
    Lc = L / 2 + seq_tile(L) / 2
    return 12 * Dqk * Dv + 2 * Lc * (Dqk * (score_qk + 2) + Dv * (score_dhv + 2))


def captured_bytes(Dqk, Dv, L, S=4096) -> float:
    """Bytes handed per token-head, from launches captured on meta tensors (bench/gpu_compile.py:
    nothing runs), and that workload (its launches, for compiling)."""
    sys.path.append(str(REPO / "bench"))
    import gpu_compile

    class Config:
        num_heads, inner_dim, chunk_size = 1, Dqk, L

    work = gpu_compile.run_workload("derive", Config, 1, S, 132, segments=1)
    return gpu_compile.bytes_handed(work) / S, work


def derive_auto(head_dims, chunks=(64, 128, 256, 512, 1024), arch=90):
    """For each head dim the chunk with the lowest roofline bound whose kernels compile for
    sm_`arch` without spills: the table AUTO_CHUNK of kernels/mlstm/chunking.py."""
    sys.path.append(str(REPO / "bench"))
    import gpu_compile

    table, lines = {}, []
    for D in head_dims:
        best = None
        for L in chunks:
            nbytes, work = captured_bytes(D, D, L)
            flops = project_flops_model(D, D, L)
            bound = roofline_ns(flops, nbytes)
            spills = 0
            for launch, _ in gpu_compile.distinct_launches([work]):
                result = gpu_compile.compile_launch(launch, arch)
                spills += result.spill_bytes if result.ok else 1
            ratio = flops / chunkwise_minimum(D, D, L)
            lines.append(f"head dim {D:>4} chunk {L:>5}: {flops / 1e6:7.3f} MFLOP ({ratio:.2f}x "
                         f"minimum), {nbytes / 1024:6.2f} KiB, bound {bound:6.2f} ns, sm_{arch} spill {spills} B")
            if not spills and (best is None or bound < best[0]):
                best = (bound, L)
        table[D] = best[1] if best else None
    return table, lines


def roofline_ns(flops, nbytes) -> float:
    """ns per token-head on the H100 SXM datasheet roofline: a bound from counts, not a timing."""
    return max(flops / PEAK_FLOPS, nbytes / PEAK_BYTES) * 1e9


def resolve_chunk(chunk, D, S):
    from kernels.mlstm.chunking import resolve_chunk_size

    return resolve_chunk_size("auto" if chunk == "auto" else int(chunk), D, D, S)


def context_of(spec, L):
    """--context: an int, or '<n>L' for n chunks."""
    return int(spec[:-1] or 1) * L if spec.endswith("L") else int(spec)


def rows_for(head_dims, chunks, context, with_tfla, per_kernel, dtype="bfloat16", multiply=True):
    rows = []
    tfla_cache = {}
    for D in head_dims:
        for chunk in chunks:
            L = resolve_chunk(chunk, D, 1 << 20)
            S = max(context_of(context, L), L)
            ours = project_work(S, D, D, L, dtype, multiply)
            row = dict(head_dim=D, model_flops=project_flops_model(D, D, L), L=L, context=S,
                       chunk=f"auto = {L}" if chunk == "auto" else str(L),
                       flops=ours.flops, bytes=ours.bytes, minimum=chunkwise_minimum(D, D, L),
                       bound_ns=roofline_ns(ours.flops, ours.bytes))
            row["flops_over_minimum"] = row["flops"] / row["minimum"]
            if per_kernel:
                row["kernels"] = {phase: {name: [c[0] / S, c[1] / S] for name, c in getattr(ours, phase).items()}
                                  for phase in ("forward", "backward")}
            if with_tfla:
                S_tfla = max(S, TFLA_CHUNK)
                if (D, S_tfla) not in tfla_cache:
                    tfla_cache[(D, S_tfla)] = tfla_work(S_tfla, D, D, dtype=dtype, multiply=multiply)
                theirs = tfla_cache[(D, S_tfla)]
                row.update(tfla_flops=theirs.flops, tfla_bytes=theirs.bytes,
                           tfla_bound_ns=roofline_ns(theirs.flops, theirs.bytes))
                row["bound_ratio"] = row["tfla_bound_ns"] / row["bound_ns"]
                if per_kernel:
                    row["tfla_kernels"] = {phase: {name: [c[0] / S_tfla, c[1] / S_tfla]
                                                   for name, c in getattr(theirs, phase).items()}
                                           for phase in ("forward", "backward")}
            rows.append(row)
    return rows


def format_table(rows, with_tfla):
    header = ("| head dim | chunk | MMA MFLOP / token-head | minimum | ratio | KiB handed / token-head | "
              "bound ns | TFLA MFLOP | TFLA KiB | TFLA bound ns | bound vs TFLA |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        if with_tfla:
            tfla = (f"{r['tfla_flops'] / 1e6:.2f} | {r['tfla_bytes'] / 1024:.1f} | {r['tfla_bound_ns']:.1f} | "
                    f"{r['bound_ratio']:.2f}x")
        else:
            tfla = "not installed | not installed | not installed | -"
        lines.append(f"| {r['head_dim']} | {r['chunk']} | {r['flops'] / 1e6:.2f} | {r['minimum'] / 1e6:.2f} | "
                     f"{r['flops_over_minimum']:.2f}x | {r['bytes'] / 1024:.1f} | {r['bound_ns']:.1f} | {tfla} |")
    return "\n".join(lines)


def format_per_kernel(rows):
    lines = []
    for r in rows:
        for who in ("kernels", "tfla_kernels"):
            if who not in r:
                continue
            label = "this project" if who == "kernels" else "TFLA"
            lines.append(f"# {label}, head dim {r['head_dim']}, chunk {r['L'] if who == 'kernels' else TFLA_CHUNK}: "
                         f"MFLOP / KiB per token-head")
            for phase, kernels_ in r[who].items():
                for name, (flops, nbytes) in kernels_.items():
                    lines.append(f"  {phase:<8} {name:<42} {flops / 1e6:8.3f} {nbytes / 1024:8.2f}")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Count the MMA FLOPs and bytes the mLSTM kernels handle per "
                                                 "token-head (Triton interpreter, no GPU), beside TFLA.")
    parser.add_argument("--head-dims", default="512,256,128,64", help="head dims (Dqk = Dv), default 512,256,128,64")
    parser.add_argument("--chunks", default="auto", help="chunk sizes: 'auto' and / or ints (default auto)")
    parser.add_argument("--context", default="4096", help="tokens, or '<n>L' for n chunks (default 4096)")
    parser.add_argument("--tfla-path", help="directory holding an mlstm-kernels install (else MLSTM_KERNELS_PATH)")
    parser.add_argument("--no-tfla", action="store_true", help="skip TFLA even when installed")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="q, k, v dtype (default bfloat16; FLOPs are the same in float32, which interprets faster)")
    parser.add_argument("--skip-products", action="store_true",
                        help="count without multiplying (each dot returns its accumulator): the same counts, faster")
    parser.add_argument("--per-kernel", action="store_true", help="also print the counts per kernel")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--derive-auto", action="store_true",
                        help="print the chunk with the lowest roofline bound per head dim (no spills on sm_90): "
                             "kernels/mlstm/chunking.py's AUTO_CHUNK")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch
    import triton

    if args.derive_auto:
        table, lines = derive_auto([int(d) for d in args.head_dims.split(",")])
        print("\n".join(lines))
        print(f"AUTO_CHUNK = {table}")
        return 0
    with_tfla = not args.no_tfla and tfla_available(args.tfla_path)
    rows = rows_for([int(d) for d in args.head_dims.split(",")], args.chunks.split(","), args.context, with_tfla,
                    args.per_kernel, args.dtype, not args.skip_products)
    tfla = f"mlstm-kernels {TFLA_VERSION} triton_xl_chunk, chunk {TFLA_CHUNK}" if with_tfla else "TFLA not installed"
    print(f"# triton {triton.__version__}, torch {torch.__version__}; {tfla}; one forward + backward, {args.dtype}, "
          f"B = H = 1; bound: H100 SXM datasheet roofline from the counts (not a timing)")
    print(format_table(rows, with_tfla))
    if args.per_kernel:
        print(format_per_kernel(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dict(triton=triton.__version__, torch=torch.__version__,
                                                   tfla=TFLA_VERSION if with_tfla else None, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
