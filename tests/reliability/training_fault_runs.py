"""Trainer runs for the training-fault tests: a tiny config, ranks with faults, the local launcher.

Ranks are started by tests/pretrain/trainer_processes.py (the resume tests' helper: one
`pretrain.train.main` process per rank, gloo, logs per rank); faults come from
training_fault_hooks.py, installed in the child before the trainer runs. Launcher runs go
through `launchers.local_launch.launch_local` (what `bioxlstm launch local` calls) in a child
process, so a launcher that hangs fails the test by timeout instead of hanging pytest.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "pretrain"))

from trainer_processes import ONE_LINE_ERRORS, REPO, read_logs, start_ranks, wait_all  # noqa: E402

WORLD = 2
STEPS = 6
LAUNCH_TIMEOUT_S = 240
EXIT_PREEMPTED = 75
EXIT_USER_ERROR = 2


def write_config(base: Path, shards: Path, steps: int = STEPS, **train) -> Path:
    """One curriculum stage, context 64 x micro-batch 2 x grad_accum 2 per rank, fp32 ZeRO-2."""
    tokens_per_step = 64 * 2 * 2 * WORLD
    config = {
        "model": {"base": str(REPO / "configs/models/protein_tiny.yaml"), "d_model": 32, "num_blocks": 2},
        "data": {"modality": "protein", "shards": str(shards), "num_workers": 1},
        "train": {"out_dir": str(base / "run"), "lr": 3e-3, "min_lr": 3e-4, "warmup_tokens": 512, "warmup_start_lr": 3e-4,
                  "zero_stage": 2, "dtype": "fp32", "grad_accum": 2, "checkpoint_every": 2,
                  "keep_checkpoints": 3, "eval_every": 0, "eval_batches": 1, "log_every": 1,
                  "progress": False, "tensorboard": False, **train},
        "curriculum": {"stages": [{"context_len": 64, "micro_batch_size": 2, "tokens": steps * tokens_per_step}]},
    }
    base.mkdir(parents=True, exist_ok=True)
    path = base / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fault_preamble(faults: dict) -> str:
    """Python run in each rank before the trainer: install the faults, and make user-facing errors
    one line + exit 2 as the `bioxlstm` CLI does."""
    return (f"import sys\nsys.path.insert(0, {str(HERE)!r})\n"
            f"import training_fault_hooks\ntraining_fault_hooks.install({faults!r})\n" + ONE_LINE_ERRORS)


def run_ranks_with_faults(config: Path, log_dir: Path, faults: dict, world: int = WORLD,
                          overrides: tuple = ()) -> list[int]:
    return wait_all(start_ranks(world, ["--config", config, *overrides], log_dir, preamble=fault_preamble(faults)),
                    log_dir)


def child_environ(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(REPO), str(HERE)])
    return {**os.environ, "PYTHONPATH": path, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
            "TRITON_INTERPRET": "1", **extra}


def start_launcher(config: Path, log_dir: Path, faults: dict | None = None) -> subprocess.Popen:
    """`launch_local(2, ["--config", config])` in a child process; ranks run training_fault_worker."""
    log_dir.mkdir(parents=True, exist_ok=True)
    code = ("import sys\nfrom launchers.local_launch import launch_local\n"
            f"sys.exit(launch_local({WORLD}, ['--config', {str(config)!r}], "
            f"clean_exit_codes=(0, {EXIT_PREEMPTED}), worker_module='training_fault_worker'))")
    log = open(log_dir / "launcher.log", "ab")
    return subprocess.Popen([sys.executable, "-c", code], cwd=log_dir, stdout=log, stderr=subprocess.STDOUT,
                            env=child_environ(BIOXLSTM_TEST_FAULTS=json.dumps(faults or {})))


def wait_launcher(launcher: subprocess.Popen, log_dir: Path, timeout: float = LAUNCH_TIMEOUT_S) -> int:
    """Exit code of the launcher; a launcher still running after `timeout` is a hang (test fails)."""
    try:
        return launcher.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        launcher.kill()
        raise AssertionError(f"the launcher hung for {timeout}s:\n{launcher_log(log_dir)}") from None


def launcher_log(log_dir: Path) -> str:
    return (log_dir / "launcher.log").read_text(errors="replace")[-6000:]


def process_alive(pid: int) -> bool:
    """True for a running process (a zombie awaiting its parent's wait counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def kill_leftovers(pids: list[int]) -> None:
    """Leave no process behind when an assertion fails (only the ranks this test started)."""
    for pid in pids:
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)


def rank_pids(probe_dir: Path, timeout: float = 60.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = [probe_dir / f"pid_rank{rank}" for rank in range(WORLD)]
        if all(f.is_file() and f.read_text() for f in files):
            return [int(f.read_text()) for f in files]
        time.sleep(0.05)
    raise AssertionError(f"ranks did not start within {timeout}s")


def read_probe(probe_dir: Path, rank: int) -> list[dict]:
    path = probe_dir / f"probe_rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


__all__ = ["EXIT_PREEMPTED", "EXIT_USER_ERROR", "REPO", "STEPS", "WORLD", "child_environ", "fault_preamble",
           "kill_leftovers", "launcher_log", "process_alive", "rank_pids", "read_logs", "read_probe",
           "run_ranks_with_faults", "start_launcher", "start_ranks", "wait_all", "wait_launcher", "write_config"]
