"""Run a function in N real processes joined by a gloo process group, and collect what each returns.

The group rendezvous goes through a FileStore in a temporary directory (no TCP port to race
for with other test runs). A rank that raises makes the whole run raise with its traceback;
the gloo timeout keeps a rank stuck in a collective from hanging the test run.
"""

import datetime
import os
import pickle
import tempfile

import torch.multiprocessing as mp

COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=90)


def _entry(rank, worker, world_size, workdir, args):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{workdir}/store", rank=rank,
                            world_size=world_size, timeout=COLLECTIVE_TIMEOUT)
    try:
        result = worker(rank, world_size, *args)
        with open(os.path.join(workdir, f"rank{rank}.pkl"), "wb") as fh:
            pickle.dump(result, fh)
    finally:
        dist.destroy_process_group()


def run_ranks(worker, world_size, *args):
    """worker(rank, world_size, *args) in `world_size` spawned processes -> list of return values."""
    with tempfile.TemporaryDirectory() as workdir:
        mp.start_processes(_entry, args=(worker, world_size, workdir, args), nprocs=world_size,
                           join=True, start_method="spawn")
        results = []
        for rank in range(world_size):
            with open(os.path.join(workdir, f"rank{rank}.pkl"), "rb") as fh:
                results.append(pickle.load(fh))
        return results
