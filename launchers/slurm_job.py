"""What each SLURM task runs: the trainer, made preemptible and requeueable through submitit.

submitit pickles a `SlurmTrainingJob` and `srun` starts it once per GPU. Each task derives its
rank and rendezvous from SLURM, then runs the same trainer as `bioxlstm train`. On the
preemption/time-limit signal every rank asks the trainer to checkpoint at the next step
boundary; once the loop has returned, rank 0 lets submitit call `checkpoint()` and requeue the
job, and the requeued job resumes from `latest` (the trainer resumes automatically).

Other failures (a crashed node, an NCCL error) are requeued too, but at most `max_retries`
times; time-outs are bounded separately by submitit's `max_num_timeout`.
"""
from __future__ import annotations

import os
import sys

import submitit
from submitit.core import utils as submitit_utils

from launchers.distributed_env import from_slurm
from launchers.preemption_bridge import PreemptionBridge

EXIT_USAGE = 2  # `bioxlstm train`: configuration or checkpoint error (pretrain/cli.py)


class SlurmTrainingJob(submitit.helpers.Checkpointable):
    """Picklable callable: `train_argv` are the arguments of `bioxlstm train`."""

    def __init__(self, train_argv: list[str], max_retries: int = 3, failures: int = 0,
                 stop_after_stage: int | None = None) -> None:
        self.train_argv = list(train_argv)
        self.max_retries = max_retries
        self.failures = failures
        self.stop_after_stage = stop_after_stage

    def _resubmission(self, failures: int) -> "SlurmTrainingJob":
        return SlurmTrainingJob(self.train_argv, self.max_retries, failures, self.stop_after_stage)

    def argv_for_world(self, world_size: int) -> list[str]:
        """Trainer arguments; a stage-group job also gets `train.max_steps` = the end of its last stage.

        The step where a stage ends depends on the data-parallel size, known only inside the job.
        """
        if self.stop_after_stage is None:
            return list(self.train_argv)
        from launchers.run_plan import stage_end_step

        end_step = stage_end_step(self.train_argv, world_size, self.stop_after_stage)
        return [*self.train_argv, f"train.max_steps={end_step}"]

    def __call__(self) -> int:
        from pretrain.preemption import request_stop
        from pretrain.train import EXIT_PREEMPTED
        from pretrain.train import main as train_main

        distributed = from_slurm()
        distributed.export()
        bridge = PreemptionBridge(request_stop).install()
        print(f"bioxlstm: rank {distributed.rank}/{distributed.world_size} local rank {distributed.local_rank} "
              f"master {distributed.master_addr}:{distributed.master_port} "
              f"(after {self.failures} failed attempt(s))", flush=True)
        try:
            code = int(train_main(self.argv_for_world(distributed.world_size)) or 0)
        except SystemExit as stop:  # the trainer's CLI may exit instead of returning
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except Exception as error:
            if not getattr(error, "user_facing", False):  # a config mistake fails the same way again
                self._requeue_after_failure(distributed.rank, f"{type(error).__name__}: {error}")
            raise
        if code not in (0, EXIT_PREEMPTED):
            if code != EXIT_USAGE:  # 2 = bad arguments or config: a retry fails the same way
                self._requeue_after_failure(distributed.rank, f"trainer exit code {code}")
            raise RuntimeError(f"trainer exited with code {code}; not requeued")
        # The trainer has checkpointed and returned: now submitit may requeue (rank 0) and exit.
        bridge.hand_over(stopped_for_preemption=code == EXIT_PREEMPTED)
        return code

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on preemption/time-out: stop at the next step boundary, resubmit self.

        The requeued job restarts the same trainer arguments; the trainer resumes from `latest`.
        """
        from pretrain.preemption import request_stop

        request_stop()
        return submitit.helpers.DelayedSubmission(self._resubmission(self.failures))

    def _requeue_after_failure(self, rank: int, reason: str) -> None:
        """Rank 0 requeues the job after a non-preemption failure, at most `max_retries` times."""
        if rank != 0 or os.environ.get("SUBMITIT_FOLDER") is None:
            return
        if self.failures >= self.max_retries:
            print(f"bioxlstm: training failed ({reason}); max retries {self.max_retries} reached, "
                  "not requeueing", file=sys.stderr, flush=True)
            return
        environment = submitit.JobEnvironment()
        pickle_path = environment.paths.submitted_pickle
        current = submitit_utils.DelayedSubmission.load(pickle_path)
        retry = submitit_utils.DelayedSubmission(self._resubmission(self.failures + 1))
        retry.set_timeout(current._timeout_min, current._timeout_countdown)
        with submitit_utils.temporary_save_path(pickle_path) as tmp:
            retry.dump(tmp)
        print(f"bioxlstm: training failed ({reason}); requeueing, retry {self.failures + 1} of "
              f"{self.max_retries}", file=sys.stderr, flush=True)
        environment._requeue(current._timeout_countdown)
        sys.exit(-1)  # as submitit does after a requeue; the job restarts from the new pickle
