"""The arguments of `bioxlstm train` (standard library only), shared by the CLI (pretrain/cli.py)
and the trainer's own entry point (`python -m pretrain.train`, launcher workers), so neither of
those imports the other."""
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
