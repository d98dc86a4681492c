"""Submission through submitit's real SlurmExecutor against fake sbatch/srun on PATH."""
from __future__ import annotations

import re
import sys

from submitit.core.utils import DelayedSubmission

from fake_slurm import read_calls
from launchers.slurm_job import SlurmTrainingJob
from launchers.slurm_submit import SlurmOptions, log_folder, plan_jobs, render_script, submit_jobs
from launchers.stage_groups import build_stage_groups


def sbatch_lines(script: str) -> dict[str, str]:
    """#SBATCH --key=value lines as a dict (flags without value map to '')."""
    lines = {}
    for match in re.finditer(r"^#SBATCH --([\w-]+)(?:=(.*))?$", script, flags=re.M):
        lines[match.group(1)] = match.group(2) or ""
    return lines


def options(**overrides) -> SlurmOptions:
    values = dict(gpus_per_node=4, partition="gpu", account="bio", qos="high", constraint="h100",
                  mem="400G", exclusive=True, setup=["module load cuda/12.4"], max_retries=2, max_timeouts=5)
    values.update(overrides)
    return SlurmOptions(**values)


def test_chained_stage_groups_submit_with_afterok_dependencies(fake_slurm, tmp_path):
    run_dir = tmp_path / "run"
    groups = build_stage_groups(7, "0-3,4-5,6", "1,2,4", "12:00:00,1-00:00:00,90", 1, 60)
    train_argv = ["--config", "/cfg/prot.yaml", "train.lr=6e-4"]
    jobs = plan_jobs(train_argv, groups, options(), chained=True)

    job_ids = submit_jobs(run_dir, jobs, options())

    assert job_ids == ["1234", "1235", "1236"]
    calls = read_calls(fake_slurm, "sbatch")
    assert len(calls) == 3
    scripts = [open(call["script"]).read() for call in calls]
    flags = [sbatch_lines(script) for script in scripts]
    assert [flag.get("dependency") for flag in flags] == [None, "afterok:1234", "afterok:1235"]
    assert [flag["nodes"] for flag in flags] == ["1", "2", "4"]
    assert [flag["time"] for flag in flags] == ["720", "1440", "90"]
    assert [flag["job-name"] for flag in flags] == ["bioxlstm-stages0-3", "bioxlstm-stages4-5", "bioxlstm-stage6"]
    for flag in flags:
        assert flag["ntasks-per-node"] == "4"        # one task per GPU
        assert flag["gpus-per-node"] == "4"
        assert flag["partition"] == "gpu"
        assert flag["account"] == "bio" and flag["qos"] == "high" and flag["constraint"] == "h100"
        assert flag["mem"] == "400G"
        assert "exclusive" in flag and "requeue" in flag
        assert flag["signal"] == "USR2@120"          # submitit's preemption signal, 2 min ahead
        assert flag["output"].startswith(str(run_dir / "slurm"))
    for script in scripts:
        setup = script.split("# setup", 1)[1].split("# command", 1)[0]
        assert "module load cuda/12.4" in setup and "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1" in setup
        srun = next(line for line in script.splitlines() if line.startswith("srun "))
        assert srun.startswith("srun --unbuffered --output")
        assert srun.endswith(f"{sys.executable} -u -m submitit.core._submit {log_folder(run_dir).absolute()}")
        assert "export SUBMITIT_EXECUTOR=slurm" in script

    # Each job pickles the trainer arguments, limited to its own stages, and the retry bound.
    for job_id, last_stage in zip(job_ids, (3, 5, 6)):
        pickle_path = run_dir / "slurm" / job_id / f"{job_id}_submitted.pkl"
        delayed = DelayedSubmission.load(pickle_path)
        assert isinstance(delayed.function, SlurmTrainingJob)
        assert delayed.function.train_argv == train_argv
        assert delayed.function.stop_after_stage == last_stage
        assert delayed.function.max_retries == 2 and delayed.function.failures == 0
        assert delayed._timeout_countdown == 5        # submitit's max_num_timeout


def test_dry_run_script_is_exactly_what_gets_submitted(fake_slurm, tmp_path):
    run_dir = tmp_path / "run"
    groups = build_stage_groups(2, None, "1,2", "60", 1, 60)
    jobs = plan_jobs(["--config", "x.yaml"], groups, options(exclusive=False, account=None), chained=True)
    submit_jobs(run_dir, jobs, options())
    submitted = [open(call["script"]).read() for call in read_calls(fake_slurm, "sbatch")]
    assert render_script(run_dir, jobs[0].parameters) == submitted[0]
    assert render_script(run_dir, jobs[1].parameters, dependency="afterok:1234") == submitted[1]
    flags = sbatch_lines(submitted[0])
    assert "account" not in flags and "exclusive" not in flags


def test_single_job_without_chaining_trains_every_stage(fake_slurm, tmp_path):
    groups = build_stage_groups(1, None, "8", "2-00:00:00", 1, 60)
    jobs = plan_jobs(["--config", "x.yaml"], groups, options(), chained=False)
    assert jobs[0].train_argv == ["--config", "x.yaml"] and jobs[0].stop_after_stage is None
    submit_jobs(tmp_path / "run", jobs, options())
    flags = sbatch_lines(open(read_calls(fake_slurm, "sbatch")[0]["script"]).read())
    assert flags["nodes"] == "8" and flags["time"] == "2880" and flags["job-name"] == "bioxlstm"
    assert "dependency" not in flags
