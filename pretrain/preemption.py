"""Stop requests: SIGTERM / SIGUSR1 (SLURM preemption) or `request_stop()` from a launcher.

The handler only sets a flag; the training loop looks at it at each optimizer-step boundary,
agrees on it across ranks (one rank signalled = all stop), writes a checkpoint and returns
EXIT_PREEMPTED. Nothing is done inside the signal handler itself.
"""
from __future__ import annotations

import signal
import threading

_STOP = threading.Event()
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")


def request_stop(*_args) -> None:
    """Ask the running trainer to checkpoint at the next step boundary and return."""
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def clear_stop() -> None:
    _STOP.clear()


def install_signal_handlers() -> dict:
    """Route SIGTERM and SIGUSR1 to request_stop (main thread only); returns the old handlers."""
    previous = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for name in STOP_SIGNALS:
        number = getattr(signal, name, None)
        if number is not None:
            previous[number] = signal.signal(number, request_stop)
    return previous


def restore_signal_handlers(previous: dict) -> None:
    for number, handler in previous.items():
        signal.signal(number, handler)
