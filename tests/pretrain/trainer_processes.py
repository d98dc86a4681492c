"""Start `python -m pretrain.train` as N real ranks (RANK/WORLD_SIZE/MASTER_ADDR/PORT env, gloo).

Used by the resume tests: they need real processes that can be killed with SIGTERM or crash
while writing a checkpoint, and fresh processes to resume in.

The ranks meet at a TCPStore that this process hosts on a port the kernel gives it and holds
until the ranks are done (torchrun's agent store: TORCHELASTIC_USE_AGENT_STORE). Picking a
free port, closing it and letting rank 0 bind it seconds later (after its imports) left a
window in which any other socket on a busy machine could take that port: rank 0 then failed
with EADDRINUSE and rank 1 waited on a stranger's socket.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from launchers.local_launch import rendezvous_store, worker_environ

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240


class RankProcesses(list):
    """The Popen of each rank, and the rendezvous store they joined (alive as long as this list)."""

    def __init__(self, procs: list, store):
        super().__init__(procs)
        self.store = store


# Preamble that makes a rank behave like the `bioxlstm` CLI: user-facing errors -> one line, exit 2.
ONE_LINE_ERRORS = ("import pretrain.train as _t\n"
                   "_main = _t.main\n"
                   "def main(argv):\n"
                   "    try:\n"
                   "        return _main(argv)\n"
                   "    except Exception as e:\n"
                   "        if getattr(e, 'user_facing', False):\n"
                   "            print('error:', e, flush=True); return 2\n"
                   "        raise\n"
                   "_t.main = main\n")


def start_ranks(world_size: int, argv: list, log_dir: Path, preamble: str = "") -> RankProcesses:
    """Popen one process per rank. `preamble` is python run before the trainer (test hooks)."""
    store = rendezvous_store(world_size, timeout_s=TIMEOUT_S)
    code = (f"{preamble}\nimport sys\nimport pretrain.train\nmain = pretrain.train.main\n"
            f"sys.exit(main({list(map(str, argv))!r}))")
    procs = []
    log_dir.mkdir(parents=True, exist_ok=True)
    for rank in range(world_size):
        env = worker_environ(rank, world_size, store.port, agent_store=True,
                             base={**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu",
                                   "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"})
        log = open(log_dir / f"rank{rank}.log", "ab")
        procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, cwd=str(log_dir),
                                      stdout=log, stderr=subprocess.STDOUT))
    return RankProcesses(procs, store)


def wait_all(procs: list, log_dir: Path, timeout: float = TIMEOUT_S) -> list:
    """Each rank's own exit code, once every rank has exited; a rank still running at `timeout`
    is a hang: every rank is killed and the test fails with the logs.

    A rank whose peer failed is never killed early: the trainer makes it fail by itself (the
    peer's closed connection fails its next collective at once; train.collective_timeout_s
    bounds a hung peer). Killing it a fixed time after the first failure would replace the
    code it is about to exit with (2 for a user-facing error, as its peer) by -9 whenever it
    exits more slowly than that, which on a loaded machine it sometimes does."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return codes
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.kill()
    codes = [p.wait() for p in procs]
    raise AssertionError(f"ranks did not finish in {timeout}s (exit codes after kill: {codes}); logs in "
                         f"{log_dir}:\n{read_logs(log_dir)}")


def run_ranks(world_size: int, argv: list, log_dir: Path, preamble: str = "") -> list:
    return wait_all(start_ranks(world_size, argv, log_dir, preamble), log_dir)


def sigterm_when(procs: list, condition, timeout: float = TIMEOUT_S) -> None:
    """Send SIGTERM to every rank (as SLURM does on preemption) once `condition()` holds."""
    deadline = time.time() + timeout
    while time.time() < deadline and not condition():
        if any(p.poll() is not None for p in procs):
            return
        time.sleep(0.05)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)


def read_logs(log_dir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(log_dir.glob("*.log")))
