"""Sequence-mixing kernel benchmark on one GPU: our Triton chunkwise mLSTM against SDPA flash
attention and the public TFLA kernel, at a constant number of tokens per step.

For each (heads, head dim) and each context length S = 2^min..2^max, the batch is
tokens / S (at least 1, so beyond S = tokens a step holds S tokens), bf16 inputs. Providers:

    ours          kernels.mlstm.autograd.mlstm_chunkwise_triton
    ours-segP     kernels.mlstm_chunkwise(..., backend="triton", segments=P) (in-GPU state passing)
    sdpa-flash    torch SDPA restricted to the flash-attention backend, causal
    tfla          mlstm_kernels get_mlstm_kernel("chunkwise--triton_xl_chunk"), only if installed
                  (benchmark-only, never a dependency of this project)

Times are medians from triton.testing.do_bench: "fwd" runs under torch.no_grad, "fwd+bwd" runs
the forward with autograd and a backward from a fixed random cotangent. Throughput:
    mLSTM FLOPs per token and head (causal half of the intra-chunk square counted):
        fwd = L (Dqk + Dv) + 4 Dqk Dv,  bwd = 2 fwd   (L = chunk size)
    attention FLOPs per token and head: fwd = 2 S D (causal), bwd = 2.5 fwd
    bytes: bf16 q, k, v, h (+ dh, dq, dk, dv in the backward) and fp32 gates that each pass must
    touch at least once
and are reported against the H100 ceilings measured for this project (DESIGN.md section 3):
784 TFLOP/s bf16 matmul, 3000 GB/s copy.

    python bench/kernels.py --out bench/results/kernels_h100.json
    python bench/kernels.py --configs 8x128 --min-log2 11 --max-log2 13 --providers ours,sdpa-flash
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PEAK_TFLOPS = 784.0
PEAK_GBPS = 3000.0
ALL_PROVIDERS = ("ours", "ours-seg", "sdpa-flash", "tfla")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Forward and forward+backward time of mLSTM kernels vs flash attention at a "
                    "constant number of tokens per step (needs a CUDA GPU).")
    parser.add_argument("--out", help="write the results as JSON to this path (refuses to overwrite "
                                      "an existing file unless --force)")
    parser.add_argument("--force", action="store_true", help="allow --out to replace an existing file")
    parser.add_argument("--tokens", type=int, default=65536,
                        help="tokens per step; batch = tokens / S, at least 1 (default 65536)")
    parser.add_argument("--configs", default="8x128,4x256",
                        help="comma-separated HEADSxHEAD_DIM pairs (default 8x128,4x256)")
    parser.add_argument("--min-log2", type=int, default=11, help="shortest context 2^N (default 11)")
    parser.add_argument("--max-log2", type=int, default=17, help="longest context 2^N (default 17)")
    parser.add_argument("--chunk-size", type=chunk_size_arg, default="auto",
                        help="our kernel's chunk size: an int or 'auto', the rule of kernels/mlstm/chunking.py "
                             "(default auto: 1024 at head dim 512, 512 at 256, 256 at 128)")
    parser.add_argument("--segments", default="2,4,8,16",
                        help="segment counts P for the ours-segP variants (default 2,4,8,16)")
    parser.add_argument("--providers", default=",".join(ALL_PROVIDERS),
                        help=f"comma-separated subset of {', '.join(ALL_PROVIDERS)} (default: all)")
    parser.add_argument("--passes", default="fwd,fwdbwd", help="fwd, fwdbwd or both (default both)")
    parser.add_argument("--warmup-ms", type=int, default=25, help="do_bench warm-up time in ms")
    parser.add_argument("--rep-ms", type=int, default=100, help="do_bench measuring time in ms")
    parser.add_argument("--check", action="store_true",
                        help="before timing, compare ours with the pure torch backend on a small "
                             "bf16 input (values and gradients) and print the relative errors")
    return parser.parse_args(argv)


def chunk_size_arg(text):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an int, got {text!r}") from None


def chunk_for(chunk_size, Dqk, Dv, S):
    """The int chunk our kernels run for `chunk_size` ("auto" or an int) at this shape."""
    from kernels.mlstm.chunking import resolve_chunk_size

    return resolve_chunk_size(chunk_size, Dqk, Dv, S)


def mlstm_flops(tokens, H, Dqk, Dv, L, passes):
    fwd = tokens * H * (L * (Dqk + Dv) + 4 * Dqk * Dv)
    return fwd if passes == "fwd" else 3 * fwd


def attention_flops(tokens, H, S, D, passes):
    fwd = tokens * H * 2 * S * D
    return fwd if passes == "fwd" else 3.5 * fwd


def min_bytes(tokens, H, Dqk, Dv, passes, gates=True):
    fwd = tokens * H * (2 * (2 * Dqk + 2 * Dv) + (8 if gates else 0))
    if passes == "fwd":
        return fwd
    bwd = tokens * H * (2 * (4 * Dqk + 4 * Dv) + (16 if gates else 0))
    return fwd + bwd


def make_providers(names, chunk_size, segments):
    """name -> (kind, fn(q, k, v, i, f) -> h); kind 'mlstm' or 'attention'. Missing ones skipped."""
    import torch
    import torch.nn.functional as F

    providers = {}
    if "ours" in names or "ours-seg" in names:
        from kernels.mlstm.autograd import mlstm_chunkwise_triton
    if "ours" in names:
        providers["ours"] = ("mlstm", lambda q, k, v, i, f: mlstm_chunkwise_triton(
            q, k, v, i, f, chunk_size=chunk_for(chunk_size, q.shape[-1], v.shape[-1], q.shape[2])))
    if "ours-seg" in names:
        try:
            from kernels import mlstm_chunkwise
        except ImportError as exc:
            print(f"skipping ours-seg: {exc}", file=sys.stderr)
        else:
            for P in segments:
                providers[f"ours-seg{P}"] = ("mlstm", lambda q, k, v, i, f, P=P: mlstm_chunkwise(
                    q, k, v, i, f, chunk_size=chunk_size, backend="triton", segments=P))
    if "sdpa-flash" in names:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def sdpa(q, k, v, i, f):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        providers["sdpa-flash"] = ("attention", sdpa)
    if "tfla" in names:
        try:
            from mlstm_kernels.torch import get_mlstm_kernel
            tfla = get_mlstm_kernel("chunkwise--triton_xl_chunk")
        except Exception as exc:  # not installed or failing to import: benchmark-only comparison
            print(f"skipping tfla (mlstm_kernels not usable: {type(exc).__name__}: {exc})", file=sys.stderr)
        else:
            providers["tfla"] = ("mlstm", lambda q, k, v, i, f: tfla(q, k, v, i, f))
    return providers


def make_inputs(B, H, S, D, device):
    import torch

    q, k, v = (torch.randn(B, H, S, D, device=device, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    i = torch.randn(B, H, S, device=device, dtype=torch.float32, requires_grad=True)
    f = (torch.randn(B, H, S, device=device, dtype=torch.float32) + 3.0).requires_grad_()
    dh = torch.randn(B, H, S, D, device=device, dtype=torch.bfloat16)
    return (q, k, v, i, f), dh


def time_pass(fn, inputs, dh, passes, warmup_ms, rep_ms):
    import torch
    from triton.testing import do_bench

    if passes == "fwd":
        def run():
            with torch.no_grad():
                fn(*inputs)
    else:
        def run():
            fn(*inputs).backward(dh)
    return do_bench(run, warmup=warmup_ms, rep=rep_ms, grad_to_none=list(inputs), return_mode="median")


def check_against_torch(chunk_size):
    """Relative errors of ours vs the pure torch chunkwise backend on one small bf16 input."""
    import torch

    from kernels.mlstm.autograd import mlstm_chunkwise_triton
    from kernels.mlstm.chunkwise_torch import mlstm_chunkwise_torch

    torch.manual_seed(0)
    inputs, dh = make_inputs(1, 4, 2048, 128, "cuda")
    chunk_size = chunk_for(chunk_size, 128, 128, 2048)
    results = {}
    for name, fn in (("ours", mlstm_chunkwise_triton), ("torch", mlstm_chunkwise_torch)):
        leaves = [x.detach().clone().requires_grad_() for x in inputs]
        h = fn(*leaves, chunk_size=chunk_size)
        h.backward(dh)
        results[name] = [h] + [x.grad for x in leaves]
    for label, got, ref in zip(("h", "dq", "dk", "dv", "di", "df"), results["ours"], results["torch"]):
        err = ((got.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
        print(f"check {label}: relative error {err:.2e}")


def run_benchmark(args):
    import torch
    import triton
    from tqdm import tqdm

    configs = [tuple(int(x) for x in item.lower().split("x")) for item in args.configs.split(",")]
    segments = [int(x) for x in args.segments.split(",") if x]
    passes_list = [p for p in args.passes.split(",") if p]
    providers = make_providers(set(args.providers.split(",")), args.chunk_size, segments)
    seq_lens = [2 ** n for n in range(args.min_log2, args.max_log2 + 1)]
    jobs = [(H, D, S, name) for H, D in configs for S in seq_lens for name in providers]
    rows = []
    for H, D, S, name in tqdm(jobs, desc="benchmark", unit="case"):
        kind, fn = providers[name]
        B = max(1, args.tokens // S)
        tokens = B * S
        row = dict(provider=name, heads=H, head_dim=D, seq_len=S, batch=B, tokens=tokens)
        for passes in passes_list:
            try:
                inputs, dh = make_inputs(B, H, S, D, "cuda")
                ms = time_pass(fn, inputs, dh, passes, args.warmup_ms, args.rep_ms)
            except torch.cuda.OutOfMemoryError:
                row[f"{passes}_ms"] = None
                row[f"{passes}_error"] = "out of memory"
                continue
            except Exception as exc:  # a provider that cannot run this shape: record, go on
                row[f"{passes}_ms"] = None
                row[f"{passes}_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                continue
            finally:
                inputs = dh = None
                torch.cuda.empty_cache()
            if kind == "mlstm":
                chunk = chunk_for(args.chunk_size, D, D, S) if name.startswith("ours") else 128
                flops = mlstm_flops(tokens, H, D, D, chunk, passes)
                nbytes = min_bytes(tokens, H, D, D, passes)
            else:
                flops = attention_flops(tokens, H, S, D, passes)
                nbytes = min_bytes(tokens, H, D, D, passes, gates=False)
            tflops = flops / (ms * 1e-3) / 1e12
            gbps = nbytes / (ms * 1e-3) / 1e9
            row.update({f"{passes}_ms": ms, f"{passes}_tflops": tflops,
                        f"{passes}_tflops_pct_peak": 100 * tflops / PEAK_TFLOPS,
                        f"{passes}_gbps": gbps, f"{passes}_gbps_pct_peak": 100 * gbps / PEAK_GBPS})
        rows.append(row)
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                tokens_per_step=args.tokens, chunk_size=args.chunk_size,
                peak_tflops=PEAK_TFLOPS, peak_gbps=PEAK_GBPS)
    return meta, rows


def format_table(rows, passes_list):
    header = f"{'provider':<12} {'H':>2} {'D':>4} {'S':>7} {'B':>3}"
    for passes in passes_list:
        header += f" | {passes + ' ms':>11} {'TFLOP/s':>8} {'%784':>5} {'GB/s':>7} {'%3000':>5}"
    lines = [header, "-" * len(header)]
    for row in rows:
        line = f"{row['provider']:<12} {row['heads']:>2} {row['head_dim']:>4} {row['seq_len']:>7} {row['batch']:>3}"
        for passes in passes_list:
            ms = row.get(f"{passes}_ms")
            if ms is None:
                line += f" | {row.get(passes + '_error', 'n/a')[:45]:>45}"
            else:
                line += (f" | {ms:>11.3f} {row[passes + '_tflops']:>8.1f} {row[passes + '_tflops_pct_peak']:>5.1f}"
                         f" {row[passes + '_gbps']:>7.0f} {row[passes + '_gbps_pct_peak']:>5.1f}")
        lines.append(line)
    return "\n".join(lines)


def write_json(path, meta, rows, force):
    """Write atomically (bench.step_report.write_atomic) so an interrupted run leaves no half file."""
    from pathlib import Path

    from bench.step_report import write_atomic

    if os.path.exists(path) and not force:
        raise SystemExit(f"--out {path} exists; pass --force to replace it or choose another path")
    write_atomic(Path(path), json.dumps(dict(meta=meta, results=rows), indent=2))


def main(argv=None):
    args = parse_args(argv)
    if args.out and os.path.exists(args.out) and not args.force:
        print(f"error: --out {args.out} exists; pass --force to replace it or choose another path",
              file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        print("error: bench/kernels.py needs a CUDA GPU (the Triton interpreter on CPU is far too slow "
              "to time); the kernels' correctness tests run on CPU: pytest tests/kernels", file=sys.stderr)
        return 2
    if args.check:
        check_against_torch(args.chunk_size)
    meta, rows = run_benchmark(args)
    passes_list = [p for p in args.passes.split(",") if p]
    print(format_table(rows, passes_list))
    if args.out:
        write_json(args.out, meta, rows, args.force)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
