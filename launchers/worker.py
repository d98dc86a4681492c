"""Entry of one local worker process: `python -m launchers.worker <train args>`.

The same trainer as `bioxlstm train`, plus the preemption bridge so that the signal submitit
uses on SLURM (USR2) also makes a local run checkpoint and stop; SIGTERM and SIGUSR1 are handled
by the trainer itself.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from pretrain.preemption import request_stop
    from pretrain.train import main as train_main

    from launchers.preemption_bridge import PreemptionBridge

    PreemptionBridge(request_stop).install()
    return int(train_main(list(sys.argv[1:] if argv is None else argv)) or 0)


if __name__ == "__main__":
    sys.exit(main())
