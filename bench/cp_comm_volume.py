"""Communication volume of context-parallel mLSTM per layer, and proof that it does not grow with S.

Per mLSTM layer each CP rank sends one summary (F, C, n, m per head: B*H*(Dqk*Dv + Dqk + 2)
fp32 values, plus one length entry) in one all-gather forward and receives CP of them; the
backward is one reduce-scatter of the same size. Nothing depends on the sequence length.

    python bench/cp_comm_volume.py                      # formula for the paper models + a gloo count
    python bench/cp_comm_volume.py --batch 1 --heads 4 --dqk 512 --dv 512 --cp 8 --no-measure

The measurement spawns --cp real gloo processes on this machine, runs one forward + backward of
`mlstm_context_parallel` at two global sequence lengths and counts the bytes passed to the
collectives (wrappers around the module's all-gather and reduce-scatter).
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from kernels.mlstm.context_parallel import cp_summary_bytes  # noqa: E402

# (name, B, H, Dqk, Dv): Prot-xLSTM sizes from DESIGN.md section 8, batch 1 at long context.
PAPER_MODELS = [
    ("Prot-xLSTM-26M", 1, 4, 256, 256),
    ("Prot-xLSTM-102M", 1, 4, 512, 512),
]


def _measure_rank(rank, cp, workdir, B, H, Dqk, Dv, seq_lens):
    import kernels.mlstm.context_parallel as cp_module

    dist.init_process_group("gloo", init_method=f"file://{workdir}/store", rank=rank, world_size=cp)
    counts = {}
    original_gather, original_scatter = cp_module._all_gather, cp_module._reduce_scatter

    def counted(key, fn, received):
        def wrapper(output, tensor, *args, **kwargs):
            counted_tensor = output if received else tensor
            counts[key] = counts.get(key, 0) + counted_tensor.numel() * counted_tensor.element_size()
            return fn(output, tensor, *args, **kwargs)
        return wrapper

    results = []
    for S in seq_lens:
        counts.clear()
        cp_module._all_gather = counted("all_gather_received", original_gather, received=True)
        cp_module._reduce_scatter = counted("reduce_scatter_sent", original_scatter, received=False)
        L = S // cp
        q, k = (torch.randn(B, H, L, Dqk, requires_grad=True) for _ in range(2))
        v = torch.randn(B, H, L, Dv, requires_grad=True)
        i, f = (torch.randn(B, H, L, requires_grad=True) for _ in range(2))
        cp_module.mlstm_context_parallel(q, k, v, i, f, None if cp == 1 else dist.group.WORLD,
                                         chunk_size=64, backend="torch").sum().backward()
        cp_module._all_gather, cp_module._reduce_scatter = original_gather, original_scatter
        results.append((S, dict(counts)))
    if rank == 0:
        torch.save(results, os.path.join(workdir, "counts.pt"))
    dist.destroy_process_group()


def measure(B, H, Dqk, Dv, cp, seq_lens):
    with tempfile.TemporaryDirectory() as workdir:
        mp.start_processes(_measure_rank, args=(cp, workdir, B, H, Dqk, Dv, seq_lens), nprocs=cp,
                           join=True, start_method="spawn")
        return torch.load(os.path.join(workdir, "counts.pt"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1, help="sequences per rank (B)")
    parser.add_argument("--heads", type=int, default=2, help="mLSTM heads (H)")
    parser.add_argument("--dqk", type=int, default=32, help="query/key head dimension")
    parser.add_argument("--dv", type=int, default=32, help="value head dimension")
    parser.add_argument("--cp", type=int, default=2, help="context-parallel size (processes spawned)")
    parser.add_argument("--seq-lens", type=int, nargs=2, default=[512, 4096],
                        help="two global sequence lengths to measure (each divisible by --cp)")
    parser.add_argument("--no-measure", action="store_true", help="print the formula only, spawn nothing")
    args = parser.parse_args(argv)

    print("formula: bytes each rank receives from the summary all-gather, per layer, forward "
          "(the backward reduce-scatter moves the same)")
    for name, B, H, Dqk, Dv in PAPER_MODELS + [("this run", args.batch, args.heads, args.dqk, args.dv)]:
        row = ", ".join(f"CP={cp}: {cp_summary_bytes(B, H, Dqk, Dv, cp) / 2**20:.2f} MiB" for cp in (2, 4, 8, 16))
        print(f"  {name:16s} B={B} H={H} Dqk={Dqk} Dv={Dv}: {row}")
    if args.no_measure:
        return 0

    expected = cp_summary_bytes(args.batch, args.heads, args.dqk, args.dv, args.cp)
    print(f"measured on {args.cp} gloo processes (B={args.batch} H={args.heads} Dqk={args.dqk} Dv={args.dv}), "
          f"formula {expected} bytes:")
    measured = measure(args.batch, args.heads, args.dqk, args.dv, args.cp, args.seq_lens)
    for S, counts in measured:
        print(f"  S={S:7d}: all-gather received {counts.get('all_gather_received', 0)} bytes, "
              f"backward reduce-scatter sent {counts.get('reduce_scatter_sent', 0)} bytes")
    same = measured[0][1] == measured[1][1] and measured[0][1].get("all_gather_received") == expected
    print("independent of S and equal to the formula:", "yes" if same else "NO")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
