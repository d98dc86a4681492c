"""Bounded requeue after failures that are not preemption, inside a (fake-SLURM) submitit job."""
from __future__ import annotations

import pytest
from submitit.core.utils import DelayedSubmission

from fake_slurm import read_calls
from launchers.slurm_job import SlurmTrainingJob
from launchers.slurm_submit import SlurmOptions, log_folder, plan_jobs, submit_jobs
from launchers.stage_groups import build_stage_groups


@pytest.fixture
def submitted_job(fake_slurm, tmp_path, monkeypatch):
    """A job submitted through submitit (fake sbatch), and the environment its task 0 would see."""
    run_dir = tmp_path / "run"
    options = SlurmOptions(gpus_per_node=2, partition="gpu", max_retries=2, max_timeouts=4)
    jobs = plan_jobs(["--config", "x.yaml"], build_stage_groups(1, None, None, None, 1, 60), options, False)
    (job_id,) = submit_jobs(run_dir, jobs, options)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SUBMITIT_FOLDER", str(log_folder(run_dir)))
    monkeypatch.setenv("SLURM_JOB_ID", job_id)
    monkeypatch.setenv("SLURM_PROCID", "0")
    pickle_path = run_dir / "slurm" / job_id / f"{job_id}_submitted.pkl"
    return job_id, pickle_path, fake_slurm


def test_failures_requeue_until_max_retries_then_stop(submitted_job):
    job_id, pickle_path, calls_log = submitted_job
    for attempt in range(2):
        job = DelayedSubmission.load(pickle_path).function
        assert job.failures == attempt
        with pytest.raises(SystemExit):
            job._requeue_after_failure(rank=0, reason="NCCL error")
        retried = DelayedSubmission.load(pickle_path)
        assert retried.function.failures == attempt + 1
        assert retried.function.train_argv == ["--config", "x.yaml"]
        assert retried._timeout_countdown == 4 and retried._timeout_min == 60  # time-out budget untouched
    assert [call["args"] for call in read_calls(calls_log, "scontrol")] == [["requeue", job_id]] * 2

    exhausted = DelayedSubmission.load(pickle_path).function
    exhausted._requeue_after_failure(rank=0, reason="NCCL error")     # returns: no more requeues
    assert len(read_calls(calls_log, "scontrol")) == 2
    assert DelayedSubmission.load(pickle_path).function.failures == 2


def test_only_rank0_requeues(submitted_job):
    _, pickle_path, calls_log = submitted_job
    DelayedSubmission.load(pickle_path).function._requeue_after_failure(rank=1, reason="x")
    assert read_calls(calls_log, "scontrol") == []


def test_checkpoint_asks_the_trainer_to_stop_and_resubmits_the_same_run():
    from pretrain import preemption

    job = SlurmTrainingJob(["--config", "x.yaml", "a.b=1"], max_retries=5, failures=1, stop_after_stage=2)
    assert not preemption.stop_requested()
    try:
        resubmission = job.checkpoint()
        assert preemption.stop_requested()       # the loop checkpoints at its next step boundary
    finally:
        preemption.clear_stop()
    assert isinstance(resubmission.function, SlurmTrainingJob)
    assert resubmission.function.train_argv == job.train_argv
    assert (resubmission.function.max_retries, resubmission.function.failures) == (5, 1)
    assert resubmission.function.stop_after_stage == 2
