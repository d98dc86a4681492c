"""Preemption through the launchers with the real trainer: checkpoint, requeue, resume, same result.

Tiny Prot-xLSTM on the bundled demo clusters, 2 ranks on gloo, DeepSpeed ZeRO-2 on CPU, fp32,
two curriculum stages of 4 steps. An uninterrupted `launch local --nproc 2` run is the
reference. Then (1) `launch local` receives USR2, the signal submitit asks SLURM to send,
forwards it, every rank checkpoints, the launcher exits 75, and a second launch finishes; (2)
two SLURM tasks run by submitit's own job runner (`python -m submitit.core._submit`, SLURM
variables set as srun would, fake `scontrol` on PATH) receive USR2: the job checkpoints,
rewrites its pickle and calls `scontrol requeue`; the "requeued" tasks resume and finish. Both
must reproduce the reference loss curve bit for bit and end with the same parameters.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from submitit.core.utils import DelayedSubmission, pickle_load

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pretrain"))

from fake_slurm import fake_slurm_environ, install_fake_slurm, read_calls  # noqa: E402
from launchers.local_launch import rendezvous_store  # noqa: E402
from launchers.slurm_job import SlurmTrainingJob  # noqa: E402
from launchers.slurm_submit import SlurmOptions, log_folder, plan_jobs, submit_jobs  # noqa: E402
from launchers.stage_groups import StageGroup  # noqa: E402
from trainer_processes import RankProcesses  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
WORLD = 2
STEPS = 8
EXIT_PREEMPTED = 75
TIMEOUT_S = 240

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from data_pipeline.demo import build_demo_shards

    return build_demo_shards(tmp_path_factory.mktemp("shards") / "protein", "protein")


def write_config(base: Path, shards: Path) -> Path:
    tokens_per_step = 64 * 4 * 2 * WORLD
    config = {
        "model": {"base": str(REPO / "configs/models/protein_tiny.yaml"), "d_model": 32, "num_blocks": 2},
        "data": {"modality": "protein", "shards": str(shards), "num_workers": 1},
        "train": {"out_dir": str(base / "run"), "lr": 3e-3, "zero_stage": 2, "dtype": "fp32", "grad_accum": 2,
                  "checkpoint_every": 100, "eval_every": 0, "eval_batches": 1, "log_every": 1,
                  "progress": False, "tensorboard": False},
        "curriculum": {"stages": [
            {"context_len": 64, "micro_batch_size": 4, "tokens": 4 * tokens_per_step},
            {"context_len": 128, "micro_batch_size": 2, "tokens": 4 * tokens_per_step}]},
    }
    base.mkdir(parents=True, exist_ok=True)
    path = base / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def child_environ(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
            "TRITON_INTERPRET": "1", **extra}


def curve(run_dir: Path) -> list:
    from pretrain.metrics import read_metrics

    return [(r["step"], r["loss"], r["grad_norm"], r["lr"], r["stage"]) for r in read_metrics(run_dir)]


def final_parameters(run_dir: Path) -> dict:
    """Module weights of the newest checkpoint (DeepSpeed's model-states file of rank 0)."""
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    (states,) = sorted((run_dir / "checkpoints" / latest).rglob("mp_rank_00_model_states.pt"))
    return torch.load(states, map_location="cpu", weights_only=False)["module"]


def assert_same_parameters(run_dir: Path, reference_dir: Path) -> None:
    mine, reference = final_parameters(run_dir), final_parameters(reference_dir)
    assert mine.keys() == reference.keys()
    for name in reference:
        assert torch.equal(mine[name], reference[name]), name


def wait(procs: list[subprocess.Popen], log_dir: Path) -> list[int]:
    try:
        return [proc.wait(timeout=TIMEOUT_S) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        print(logs(log_dir))


def logs(log_dir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(log_dir.glob("*.log")))


def signal_after_steps(procs: list[subprocess.Popen], run_dir: Path, steps: int, signum: int) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while len(curve(run_dir)) < steps:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "training did not start"
        time.sleep(0.05)
    for proc in procs:
        proc.send_signal(signum)


def start_launch_local(config: Path, log_dir: Path) -> subprocess.Popen:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / "launcher.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "launchers.main", "launch", "local", "--nproc", str(WORLD),
                             "--config", str(config)], env=child_environ(), cwd=log_dir,
                            stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):
    base = tmp_path_factory.mktemp("reference")
    config = write_config(base, shards)
    assert wait([start_launch_local(config, base / "logs")], base / "logs") == [0]
    assert [row[0] for row in curve(base / "run")] == list(range(1, STEPS + 1))
    assert {row[4] for row in curve(base / "run")} == {0, 1}
    return base / "run"


def test_launch_local_usr2_checkpoints_and_the_relaunch_matches_an_uninterrupted_run(reference, shards, tmp_path):
    config = write_config(tmp_path, shards)
    run_dir = tmp_path / "run"
    launcher = start_launch_local(config, tmp_path / "logs")
    signal_after_steps([launcher], run_dir, 2, signal.SIGUSR2)
    assert wait([launcher], tmp_path / "logs") == [EXIT_PREEMPTED]
    stopped_at = len(curve(run_dir))
    assert 2 <= stopped_at < STEPS
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{stopped_at:08d}"

    assert wait([start_launch_local(config, tmp_path / "logs2")], tmp_path / "logs2") == [0]
    assert "resumed from" in (tmp_path / "logs2" / "launcher.log").read_text()
    assert curve(run_dir) == curve(reference)
    assert_same_parameters(run_dir, reference)


def start_slurm_tasks(folder: Path, job_id: str, slurm_env: dict, log_dir: Path) -> list:
    """What `srun` would start: one `python -m submitit.core._submit` per task, SLURM vars set.
    The tasks meet at a store this process hosts (a SLURM job's port comes from its job id, far
    from the ephemeral ports; a test's must not be a free port another socket can take first)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    store = rendezvous_store(WORLD, timeout_s=240)
    procs = []
    for rank in range(WORLD):
        env = child_environ(SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID=job_id, SLURM_PROCID=str(rank),
                            SLURM_LOCALID=str(rank), SLURM_NODEID="0", SLURM_NTASKS=str(WORLD),
                            SLURM_NTASKS_PER_NODE=str(WORLD), SLURM_JOB_NUM_NODES="1",
                            SLURM_JOB_NODELIST="localhost", BIOXLSTM_MASTER_PORT=str(store.port),
                            TORCHELASTIC_USE_AGENT_STORE="True", **slurm_env)
        log = open(log_dir / f"task{rank}.log", "ab")
        procs.append(subprocess.Popen([sys.executable, "-u", "-m", "submitit.core._submit", str(folder)],
                                      env=env, cwd=log_dir, stdout=log, stderr=subprocess.STDOUT))
    return RankProcesses(procs, store)


def test_slurm_job_preempted_requeues_itself_and_resumes_to_the_same_result(reference, shards, tmp_path,
                                                                            monkeypatch):
    bin_dir, calls_log = tmp_path / "fake_bin", tmp_path / "slurm_calls.jsonl"
    install_fake_slurm(bin_dir, calls_log, sys.executable)
    slurm_env = fake_slurm_environ(bin_dir, calls_log)
    config = write_config(tmp_path, shards)
    run_dir = tmp_path / "run"
    options = SlurmOptions(gpus_per_node=WORLD, partition="gpu", max_retries=2, max_timeouts=3)
    jobs = plan_jobs(["--config", str(config)], [StageGroup(0, 1, nodes=1, time_min=60)], options, False)
    for key, value in slurm_env.items():
        monkeypatch.setenv(key, value)
    (job_id,) = submit_jobs(run_dir, jobs, options)
    pickle_path = run_dir / "slurm" / job_id / f"{job_id}_submitted.pkl"
    submitted_at = pickle_path.stat().st_mtime_ns

    procs = start_slurm_tasks(log_folder(run_dir), job_id, slurm_env, tmp_path / "logs")
    signal_after_steps(procs, run_dir, 2, signal.SIGUSR2)     # SLURM signals every task of the step
    codes = wait(procs, tmp_path / "logs")
    assert codes == [255, 0]   # rank 0 requeued and exited as submitit does; rank 1 returned
    stopped_at = len(curve(run_dir))
    assert 2 <= stopped_at < STEPS
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{stopped_at:08d}"
    assert [call["args"] for call in read_calls(calls_log, "scontrol")] == [["requeue", job_id]]
    assert pickle_path.stat().st_mtime_ns > submitted_at    # checkpoint() resubmitted the job
    requeued = DelayedSubmission.load(pickle_path)
    assert isinstance(requeued.function, SlurmTrainingJob) and requeued.function.failures == 0
    assert requeued._timeout_countdown == 3                  # preemption does not use up time-outs

    procs = start_slurm_tasks(log_folder(run_dir), job_id, slurm_env, tmp_path / "logs2")
    assert wait(procs, tmp_path / "logs2") == [0, 0]
    assert "resumed from" in (tmp_path / "logs2" / "task0.log").read_text()

    outcome, value = pickle_load(run_dir / "slurm" / job_id / f"{job_id}_0_result.pkl")
    assert (outcome, value) == ("success", 0)
    assert len(read_calls(calls_log, "scontrol")) == 1
    assert curve(run_dir) == curve(reference)
    assert_same_parameters(run_dir, reference)
