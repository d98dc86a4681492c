"""Build the sbatch parameters for a training run and submit it (or print it) through submitit.

One task per GPU (`ntasks_per_node = gpus_per_node`); submitit writes the sbatch script,
including `--signal=USR2@<delay>` so the job hears about preemption and time limits early
enough to checkpoint. A curriculum split into stage groups becomes a chain of jobs linked by
`--dependency=afterok:<previous job id>`, each with its own node count and time limit.
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from launchers.stage_groups import StageGroup

# The log folder of each job; submitit replaces %j with the job id.
LOG_SUBDIR = "slurm"


@dataclass
class SlurmOptions:
    """Scheduler-side settings shared by every job of a launch."""

    gpus_per_node: int
    partition: str
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    mem: str | None = None
    exclusive: bool = False
    setup: list[str] = field(default_factory=list)
    cpus_per_task: int | None = None
    job_name: str = "bioxlstm"
    max_retries: int = 3
    max_timeouts: int = 3
    signal_delay_s: int = 120


@dataclass(frozen=True)
class PlannedJob:
    """One sbatch submission: which stages, on how many nodes, with which trainer arguments.

    `stop_after_stage` (chained jobs) ends the job after that curriculum stage; the next job in
    the chain resumes from the run's `latest` checkpoint.
    """

    group: StageGroup
    train_argv: list[str]
    parameters: dict[str, Any]
    stop_after_stage: int | None = None


def log_folder(run_dir: Path) -> Path:
    return Path(run_dir) / LOG_SUBDIR / "%j"


def executor_parameters(options: SlurmOptions, group: StageGroup, chained: bool) -> dict[str, Any]:
    """Keyword arguments for `submitit.SlurmExecutor.update_parameters` (sbatch option names)."""
    setup = [
        # A rank that loses a peer must fail (and be retried) rather than wait forever in NCCL.
        "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1",
        *options.setup,
    ]
    parameters: dict[str, Any] = {
        "job_name": f"{options.job_name}-{group.label}" if chained else options.job_name,
        "partition": options.partition,
        "time": group.time_min,
        "nodes": group.nodes,
        "ntasks_per_node": options.gpus_per_node,
        "gpus_per_node": options.gpus_per_node,
        "signal_delay_s": options.signal_delay_s,
        "setup": setup,
        # Lets SLURM requeue the job after a node failure as well (bounded by its MaxBatchRequeue).
        "additional_parameters": {"requeue": True},
    }
    optional = {
        "account": options.account,
        "qos": options.qos,
        "constraint": options.constraint,
        "mem": options.mem,
        "cpus_per_task": options.cpus_per_task,
    }
    parameters.update({key: value for key, value in optional.items() if value is not None})
    if options.exclusive:
        parameters["exclusive"] = True
    return parameters


def plan_jobs(train_argv: Sequence[str], groups: Sequence[StageGroup], options: SlurmOptions,
              chained: bool) -> list[PlannedJob]:
    """One job per stage group; a chained job stops after its group's last stage."""
    return [PlannedJob(group, list(train_argv), executor_parameters(options, group, chained),
                       group.last_stage if chained else None) for group in groups]


def render_script(run_dir: Path, parameters: dict[str, Any], dependency: str | None = None) -> str:
    """The sbatch script submitit will write for these parameters (used by --dry-run)."""
    from submitit.slurm.slurm import _make_sbatch_string

    folder = log_folder(run_dir).absolute()
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    extra = {"dependency": dependency} if dependency else {}
    return _make_sbatch_string(command=command, folder=folder, **parameters, **extra)


def submit_jobs(run_dir: Path, jobs: Sequence[PlannedJob], options: SlurmOptions) -> list[str]:
    """Submit the jobs in order, each depending (afterok) on the previous one; returns job ids."""
    import submitit

    from launchers.slurm_job import SlurmTrainingJob

    job_ids: list[str] = []
    for planned in jobs:
        executor = submitit.SlurmExecutor(folder=log_folder(run_dir), max_num_timeout=options.max_timeouts)
        parameters = dict(planned.parameters)
        if job_ids:
            parameters["dependency"] = f"afterok:{job_ids[-1]}"
        executor.update_parameters(**parameters)
        job = executor.submit(SlurmTrainingJob(planned.train_argv, max_retries=options.max_retries,
                                               stop_after_stage=planned.stop_after_stage))
        job_ids.append(str(job.job_id))
    return job_ids
