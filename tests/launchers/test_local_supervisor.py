"""The local launcher as a process supervisor: signal forwarding and fail-fast, with real processes."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from launchers.local_launch import launch_local

HERE = Path(__file__).resolve().parent


@pytest.fixture
def probe_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), str(HERE.parents[1])]))
    monkeypatch.setenv("PROBE_DIR", str(tmp_path))
    return tmp_path


def wait_for_logs(directory: Path, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(list(directory.glob("rank*.log"))) < count:
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.05)


def test_one_dead_rank_stops_the_others_and_fails(probe_env, monkeypatch):
    monkeypatch.setenv("PROBE_MODE", "crash_rank1")
    started = time.monotonic()
    code = launch_local(3, [], worker_module="signal_probe_worker")
    assert code == 3
    assert time.monotonic() - started < 30
    # ranks 0 and 2 were alive and got SIGTERM from the launcher (and exited on it)
    for rank in (0, 2):
        assert "SIGTERM world=3" in (probe_env / f"rank{rank}.log").read_text()


@pytest.mark.parametrize("signum", [signal.SIGUSR2, signal.SIGTERM])
def test_scheduler_signal_reaches_every_rank(probe_env, monkeypatch, signum):
    monkeypatch.setenv("PROBE_MODE", "wait")

    def send_when_started():
        wait_for_logs(probe_env, 2)
        os.kill(os.getpid(), signum)

    handler_before = signal.getsignal(signum)
    threading.Thread(target=send_when_started, daemon=True).start()
    code = launch_local(2, [], worker_module="signal_probe_worker")
    assert code == 0
    for rank in (0, 1):
        assert (probe_env / f"rank{rank}.log").read_text().splitlines() == [f"{signum.name} world=2"]
    assert signal.getsignal(signum) == handler_before  # the launcher restores the caller's handler
