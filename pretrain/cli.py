"""`bioxlstm train` and `bioxlstm demo` (standard library only at import, INTERFACES.md)."""
from __future__ import annotations

import argparse


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Train a model from a run config (model, data, train, parallel, curriculum sections).

    Single process when RANK/WORLD_SIZE are unset; under `bioxlstm launch` or torchrun every
    process runs this with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT set.
    A run directory (train.out_dir) that holds a checkpoint is resumed from its `latest`.
    Exit codes: 0 done; 75 checkpointed and stopped on SIGTERM/SIGUSR1 (run again to continue);
    2 a configuration or checkpoint error, a checkpoint that could not be written (disk full), or
    train.max_bad_steps steps in a row with a non-finite loss (one line on stderr).
    """
    parser.add_argument("--config", required=True, metavar="YAML",
                        help="run config, e.g. configs/prot_xlstm_102m.yaml or configs/demo_protein.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides applied before validation, values parsed as YAML, "
                             "e.g. train.lr=3e-4 train.zero_stage=2 curriculum.stages.0.tokens=1e6")
    parser.add_argument("--from", dest="from_checkpoint", metavar="CKPT", default=None,
                        help="start this (new) run from another run's checkpoint: a run directory, its "
                             "checkpoints/ directory or one checkpoints/step_* directory; weights and "
                             "optimizer state are taken, the model config must match")
    parser.add_argument("--stage", type=int, default=None, metavar="K",
                        help="with --from: begin at the start of curriculum stage K (0-based) with a fresh "
                             "loader, e.g. to fork a longer-context continuation")


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


def _run_train(args) -> int:
    from pretrain.train import run_from_args

    return run_from_args(args)


def _run_demo(args) -> int:
    from pretrain.demo import run_demo

    return run_demo(args.out, [m.strip() for m in args.modalities.split(",") if m.strip()], args.steps)
