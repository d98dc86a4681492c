"""Entry of one local worker process: `python -m launchers.worker <train args>`.

The same trainer and error handling as `bioxlstm train` (a user-facing error is one line on
stderr and exit code 2, which the launcher does not retry), plus the preemption bridge so that
the signal submitit uses on SLURM (USR2) also makes a local run checkpoint and stop; SIGTERM and
SIGUSR1 are handled by the trainer itself.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from pretrain.preemption import request_stop

    from launchers.main import main as cli_main
    from launchers.preemption_bridge import PreemptionBridge

    PreemptionBridge(request_stop).install()
    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
