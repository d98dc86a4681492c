"""Run the trainer as N processes on this machine (gloo on CPU, NCCL on GPUs).

What SLURM's srun does for a job step, done locally: one process per rank with the torchrun-style
environment, scheduler signals forwarded to every rank, and no rank left running alone: when
one dies the others are stopped and the launcher exits non-zero.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Sequence

from launchers.errors import LaunchOptionError

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
# Seconds the other ranks get to exit after SIGTERM once one rank has died, before SIGKILL.
STOP_GRACE_S = 10.0
POLL_S = 0.1


RENDEZVOUS_TIMEOUT_S = 1800.0


def rendezvous_store(nproc: int, timeout_s: float = RENDEZVOUS_TIMEOUT_S):
    """The ranks' meeting point, hosted by the launcher on a port the kernel assigns now and held
    until the ranks are done (torchrun's agent store). Picking a free port and letting rank 0
    bind it later, after its imports, leaves a window in which any other socket on a busy
    machine can take it (rank 0 then fails with EADDRINUSE)."""
    from datetime import timedelta

    import torch.distributed as dist

    return dist.TCPStore("127.0.0.1", 0, nproc, is_master=True, wait_for_workers=False,
                         timeout=timedelta(seconds=timeout_s))


def worker_environ(rank: int, nproc: int, master_port: int, base: dict[str, str] | None = None,
                   agent_store: bool = False) -> dict[str, str]:
    """The env:// rendezvous of one rank; `agent_store`: the store at MASTER_PORT is the
    launcher's (TORCHELASTIC_USE_AGENT_STORE), so rank 0 joins it instead of binding the port."""
    environ = dict(os.environ if base is None else base)
    environ.update({
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(master_port),
    })
    if agent_store:
        environ["TORCHELASTIC_USE_AGENT_STORE"] = "True"
    else:
        environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    return environ


def launch_local(nproc: int, train_argv: Sequence[str], *, master_port: int | None = None,
                 clean_exit_codes: Sequence[int] = (0,), worker_module: str = "launchers.worker") -> int:
    """Start `nproc` workers running `python -m <worker_module> <train_argv>`; return the run's exit code.

    Exit codes in `clean_exit_codes` (0, and the trainer's "stopped for preemption after
    checkpointing" code) mean a rank finished properly; any other code stops the other ranks.
    """
    if nproc < 1:
        raise LaunchOptionError(f"--nproc {nproc}: need at least one process")
    store = None if master_port else rendezvous_store(nproc)          # alive until we return
    port = master_port or store.port
    command = [sys.executable, "-m", worker_module, *train_argv]
    children: list[subprocess.Popen] = []
    previous = {signum: signal.getsignal(signum) for signum in (*FORWARDED_SIGNALS, signal.SIGINT)}

    def forward(signum: int, frame) -> None:
        # Ctrl-C reaches only the launcher (children run in their own sessions): ask them to
        # checkpoint and stop, as SIGTERM does.
        sent = signal.SIGTERM if signum == signal.SIGINT else signum
        for child in children:
            if child.poll() is None:
                child.send_signal(sent)

    for signum in previous:
        signal.signal(signum, forward)
    try:
        for rank in range(nproc):
            children.append(subprocess.Popen(command, env=worker_environ(rank, nproc, port,
                                                                         agent_store=store is not None),
                                             start_new_session=True))
        return _wait_all(children, tuple(clean_exit_codes))
    finally:
        _stop(children)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait_all(children: list[subprocess.Popen], clean_exit_codes: tuple[int, ...]) -> int:
    codes: dict[int, int] = {}
    while len(codes) < len(children):
        for rank, child in enumerate(children):
            if rank in codes:
                continue
            code = child.poll()
            if code is None:
                continue
            codes[rank] = code
            if code not in clean_exit_codes:
                print(f"launch local: rank {rank} exited with code {code}; stopping the other ranks",
                      file=sys.stderr, flush=True)
                _stop(children)
                return code if code > 0 else 128 - code
        time.sleep(POLL_S)
    # All ranks exited cleanly: report the most significant code (preempted beats done).
    return max(codes.values())


def _stop(children: list[subprocess.Popen]) -> None:
    running = [child for child in children if child.poll() is None]
    for child in running:
        child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for child in running:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
