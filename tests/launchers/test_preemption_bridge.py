"""The preemption signal asks the trainer to stop; submitit's requeue runs only after the loop returned."""
from __future__ import annotations

import os
import signal

import pytest

from launchers.preemption_bridge import PreemptionBridge, preempt_signal
from pretrain import preemption


@pytest.fixture
def submitit_handler():
    """Stands where submitit's checkpoint_and_try_requeue handler would be; records its calls."""
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    yield calls
    signal.signal(signal.SIGUSR2, previous)
    preemption.clear_stop()


def test_signal_only_requests_a_stop_then_hand_over_requeues(submitit_handler):
    bridge = PreemptionBridge(preemption.request_stop).install()
    os.kill(os.getpid(), signal.SIGUSR2)
    assert preemption.stop_requested()
    assert submitit_handler == []                 # nothing requeued while the trainer still runs
    bridge.hand_over(stopped_for_preemption=True)
    assert submitit_handler == [signal.SIGUSR2]
    os.kill(os.getpid(), signal.SIGUSR2)          # the previous handler is back in place
    assert submitit_handler == [signal.SIGUSR2, signal.SIGUSR2]


def test_sigterm_stop_is_requeued_and_completed_run_is_not(submitit_handler):
    PreemptionBridge(preemption.request_stop).install().hand_over(stopped_for_preemption=True)
    assert submitit_handler == [signal.SIGUSR2]    # stopped by SIGTERM: still requeue
    bridge = PreemptionBridge(preemption.request_stop).install()
    os.kill(os.getpid(), signal.SIGUSR2)
    bridge.hand_over(stopped_for_preemption=False)  # the run had finished: no requeue
    assert submitit_handler == [signal.SIGUSR2]


def test_signal_name_follows_submitit_override(monkeypatch):
    assert preempt_signal() == signal.SIGUSR2
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    assert preempt_signal() == signal.SIGUSR1
