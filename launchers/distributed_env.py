"""Rank, world size and rendezvous address of one task, derived from SLURM's environment.

The trainer reads the torchrun-style variables RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT. Under `srun` with one task per GPU, SLURM already tells each task who it is; this
module translates, so the trainer never needs to know it runs under SLURM.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, MutableMapping

from launchers.errors import SlurmEnvironmentError
from launchers.hostlist import resolve_hostnames

# Ports derived from the job id land in [PORT_BASE, PORT_BASE + PORT_SPAN): above the usual
# service ports and below Linux's default ephemeral range (32768+), so a freshly started job
# does not collide with a client socket the OS handed out.
PORT_BASE = 12000
PORT_SPAN = 20000


@dataclass(frozen=True)
class DistributedEnv:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: str
    master_port: int

    def as_environ(self) -> dict[str, str]:
        """The torchrun-style variables the trainer reads."""
        return {
            "RANK": str(self.rank),
            "LOCAL_RANK": str(self.local_rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }

    def export(self, environ: MutableMapping[str, str] | None = None) -> None:
        (os.environ if environ is None else environ).update(self.as_environ())


def master_port_for_job(job_id: str | int) -> int:
    """Same port on every task of a job (and of its requeued incarnation), different across jobs.

    Array jobs (`1234_7`) mix the task index in so two array tasks on one node do not collide.
    """
    text = str(job_id)
    main, _, array_index = text.partition("_")
    if not main.isdigit() or (array_index and not array_index.isdigit()):
        raise SlurmEnvironmentError(f"SLURM_JOB_ID {text!r} is not a number: cannot derive MASTER_PORT")
    number = int(main) * 1009 + int(array_index) if array_index else int(main)
    return PORT_BASE + number % PORT_SPAN


def from_slurm(environ: Mapping[str, str] | None = None) -> DistributedEnv:
    """Read SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS / SLURM_JOB_NODELIST / SLURM_JOB_ID."""
    env = os.environ if environ is None else environ
    required = ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_JOB_NODELIST", "SLURM_JOB_ID")
    missing = [name for name in required if not env.get(name)]
    if missing:
        raise SlurmEnvironmentError(
            f"missing SLURM variables {', '.join(missing)}: this entry runs inside a SLURM job step "
            "(`bioxlstm launch slurm` submits it); on one machine use `bioxlstm launch local`"
        )
    rank = _int_var(env, "SLURM_PROCID")
    local_rank = _int_var(env, "SLURM_LOCALID")
    world_size = _int_var(env, "SLURM_NTASKS")
    if not 0 <= rank < world_size:
        raise SlurmEnvironmentError(f"SLURM_PROCID={rank} is outside 0..SLURM_NTASKS-1={world_size - 1}")
    hosts = resolve_hostnames(env["SLURM_JOB_NODELIST"])
    local_world_size = _tasks_on_this_node(env, world_size, len(hosts))
    job_id = env.get("SLURM_ARRAY_JOB_ID") and f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '0')}"
    return DistributedEnv(
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
        local_world_size=local_world_size,
        master_addr=env.get("BIOXLSTM_MASTER_ADDR") or hosts[0],
        master_port=int(env.get("BIOXLSTM_MASTER_PORT") or master_port_for_job(job_id or env["SLURM_JOB_ID"])),
    )


def _tasks_on_this_node(env: Mapping[str, str], world_size: int, num_hosts: int) -> int:
    """SLURM_NTASKS_PER_NODE when set (`4` or `4(x2)`), else an even split over the nodes."""
    per_node = env.get("SLURM_NTASKS_PER_NODE", "")
    head = per_node.split("(")[0].split(",")[0]
    if head.isdigit():
        return int(head)
    return max(1, world_size // max(1, num_hosts))


def _int_var(env: Mapping[str, str], name: str) -> int:
    value = env[name]
    if not value.strip().isdigit():
        raise SlurmEnvironmentError(f"{name}={value!r} is not a non-negative integer")
    return int(value)
