"""Turn the scheduler's preemption signal into a checkpoint request for the trainer.

submitit asks SLURM for `--signal=USR2@<delay>` (SUBMITIT_PREEMPT_SIGNAL overrides USR2) and its
own handler, running on rank 0 only, would requeue and exit at once: before the other ranks
reach a step boundary and before any checkpoint is on disk. The bridge installs a handler on
every rank that only asks the trainer to stop (`pretrain.preemption.request_stop`); the loop
then checkpoints collectively and returns, and only afterwards is submitit's handler called to
requeue. The handler does nothing but set flags, which is all a signal handler may safely do.
"""
from __future__ import annotations

import os
import signal
from typing import Any, Callable


def preempt_signal() -> signal.Signals:
    """The signal submitit requests from SLURM before preemption or the time limit."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return signal.Signals[f"SIG{name}"]


class PreemptionBridge:
    """Installed in a worker process before the trainer starts; remembers who was there before."""

    def __init__(self, request_stop: Callable[[], Any]) -> None:
        self._request_stop = request_stop
        self.signum = preempt_signal()
        self.received: int | None = None
        self.previous_handler: Any = None

    def install(self) -> "PreemptionBridge":
        self.previous_handler = signal.signal(self.signum, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received = signum
        self._request_stop()

    def hand_over(self, stopped_for_preemption: bool) -> None:
        """Give the signal back to the handler that was there before ours (submitit's).

        Called once the trainer has returned. Only a run that stopped early is requeued, through
        that handler (checkpoint() then `scontrol requeue` on rank 0); the stop may also have come
        from SIGTERM, which SLURM sends first on preemption and the trainer handles itself. A run
        that completed although the signal arrived is not requeued.
        """
        handler = self.previous_handler
        signal.signal(self.signum, handler if handler is not None else signal.SIG_DFL)
        if stopped_for_preemption and callable(handler):
            handler(self.received or self.signum, None)
