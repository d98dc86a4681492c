"""Rank / world size / rendezvous derived from a synthetic multi-node SLURM environment."""
from __future__ import annotations

import pytest

from launchers.distributed_env import PORT_BASE, PORT_SPAN, from_slurm, master_port_for_job
from launchers.errors import SlurmEnvironmentError


def slurm_task_environ(procid: int, localid: int, nodeid: int, job_id: str = "4242") -> dict[str, str]:
    """What srun sets for a 4-node x 4-GPU job step, one task per GPU."""
    return {
        "SLURM_JOB_ID": job_id,
        "SLURM_PROCID": str(procid),
        "SLURM_LOCALID": str(localid),
        "SLURM_NODEID": str(nodeid),
        "SLURM_NTASKS": "16",
        "SLURM_NTASKS_PER_NODE": "4(x4)",
        "SLURM_JOB_NUM_NODES": "4",
        "SLURM_JOB_NODELIST": "gpu[001-004]",
    }


def test_every_task_of_a_multinode_job_agrees_on_rendezvous():
    envs = [from_slurm(slurm_task_environ(node * 4 + local, local, node)) for node in range(4) for local in range(4)]
    assert [env.rank for env in envs] == list(range(16))
    assert [env.local_rank for env in envs] == [0, 1, 2, 3] * 4
    assert {env.world_size for env in envs} == {16}
    assert {env.local_world_size for env in envs} == {4}
    assert {env.master_addr for env in envs} == {"gpu001"}
    assert len({env.master_port for env in envs}) == 1


def test_exported_variables_are_what_the_trainer_reads():
    environ: dict[str, str] = {}
    from_slurm(slurm_task_environ(procid=6, localid=2, nodeid=1)).export(environ)
    assert environ == {
        "RANK": "6", "LOCAL_RANK": "2", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "gpu001", "MASTER_PORT": str(master_port_for_job("4242")),
    }


def test_port_depends_on_job_id_and_stays_in_range():
    ports = {master_port_for_job(job_id) for job_id in range(100000, 100500)}
    assert len(ports) == 500
    assert all(PORT_BASE <= port < PORT_BASE + PORT_SPAN for port in ports)
    assert master_port_for_job("77_1") != master_port_for_job("77_2")
    array_env = dict(slurm_task_environ(0, 0, 0), SLURM_ARRAY_JOB_ID="77", SLURM_ARRAY_TASK_ID="2")
    assert from_slurm(array_env).master_port == master_port_for_job("77_2")


def test_outside_slurm_is_one_clear_error():
    with pytest.raises(SlurmEnvironmentError, match="SLURM_PROCID.*launch local"):
        from_slurm({"SLURM_JOB_ID": "1"})


def test_rank_outside_world_is_rejected():
    with pytest.raises(SlurmEnvironmentError, match="SLURM_PROCID=16"):
        from_slurm(slurm_task_environ(procid=16, localid=0, nodeid=0))
