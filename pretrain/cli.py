"""`bioxlstm train` and `bioxlstm demo` (standard library only at import, INTERFACES.md)."""
from __future__ import annotations

import argparse

from pretrain.train_arguments import add_train_arguments


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """CPU tour on the bundled real data: build shards, train a tiny model per modality through
    the same trainer (DeepSpeed on CPU, 2-stage context curriculum) and check that validation
    loss ends below the unigram baseline. Exits 1 if any modality does not beat it."""
    parser.add_argument("--out", default="runs/demo", metavar="DIR",
                        help="output directory for shards and runs (default: runs/demo); an existing "
                             "demo there is resumed, not overwritten")
    parser.add_argument("--modalities", default="dna,protein,molecules", metavar="LIST",
                        help="comma-separated subset of dna,protein,molecules (default: all three)")
    parser.add_argument("--steps", type=int, default=None, metavar="N",
                        help="optimizer steps per modality (default: each demo config's own, a few hundred)")


def register(subparsers) -> None:
    train = subparsers.add_parser("train", help="train a model from a run config (DeepSpeed ZeRO)",
                                  description=add_train_arguments.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(train)
    train.set_defaults(handler=_run_train)
    demo = subparsers.add_parser("demo", help="CPU demo: train tiny models on bundled data, beat the unigram baseline",
                                 description=add_demo_arguments.__doc__)
    add_demo_arguments(demo)
    demo.set_defaults(handler=_run_demo)
    env = subparsers.add_parser("env", help="versions, GPUs and known problems of this environment",
                                description="Print the versions of Python, torch (CUDA, NCCL), Triton, DeepSpeed, "
                                            "megatron-core, the GPUs seen and whether the Triton kernels target "
                                            "them, and any combination known not to work (exit 1 then). Every "
                                            "run appends the same report to <run>/environment.jsonl.")
    env.add_argument("--json", action="store_true", help="print the report as JSON")
    env.add_argument("--no-kernel-check", action="store_true",
                     help="skip compiling and running the Triton kernels on each GPU (or in the CPU interpreter "
                          "when TRITON_INTERPRET=1) against the float64 reference")
    env.set_defaults(handler=_run_env)


def _run_train(args) -> int:
    from pretrain.train import run_from_args

    return run_from_args(args)


def _run_env(args) -> int:
    from pretrain.environment import print_environment

    return print_environment(as_json=args.json, check_kernels=not args.no_kernel_check)


def _run_demo(args) -> int:
    from pretrain.demo import run_demo

    return run_demo(args.out, [m.strip() for m in args.modalities.split(",") if m.strip()], args.steps)
