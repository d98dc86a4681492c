"""Run by the loader tests in fresh processes (a rank of a gloo group, or a resumed run).

    python loader_process.py epoch RANK WORLD PORT SHARDS OUT      # one data-parallel rank
    python loader_process.py resume STATE_JSON N_BATCHES OUT       # continue a saved stream
"""
import json
import os
import sys

import torch
import torch.distributed as dist

from data_pipeline.config import DataConfig
from data_pipeline.loader import build_loader


def one_epoch_per_rank(rank: int, world: int, port: int, shards: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg = DataConfig(modality="protein", shards=shards, num_workers=2, seed=5, packing=False)
    result = {}
    for split in ("train", "validation"):
        loader = build_loader(cfg, split, 128, 2, dp_rank=dist.get_rank(), dp_size=world, seed=1)
        keys, batches = [], 0
        stream = iter(loader)
        for _ in range(len(loader)):  # one epoch (train is endless; validation stops by itself)
            next(stream)
            keys += loader.last_batch_keys
            batches += 1
        workers = loader.state_dict()["worker_consumed_samples"]
        if split == "validation":
            assert next(stream, None) is None
        gathered = [None] * world
        dist.all_gather_object(gathered, {"keys": keys, "batches": batches, "workers": workers,
                                          "epoch_order": loader.worker_items(1, 0)[:5]})
        result[split] = gathered
    if rank == 0:
        with open(out, "w") as handle:
            json.dump(result, handle)
    dist.barrier()
    dist.destroy_process_group()


def resume(state_path: str, n_batches: int, out: str) -> None:
    saved = json.load(open(state_path))
    cfg = DataConfig(**saved["cfg"])
    loader = build_loader(cfg, saved["split"], saved["context_len"], saved["micro_batch_size"],
                          saved["dp_rank"], saved["dp_size"], saved["seed"])
    loader.load_state_dict(saved["state"])
    stream = iter(loader)
    torch.save([next(stream) for _ in range(n_batches)], out)


if __name__ == "__main__":
    if sys.argv[1] == "epoch":
        one_epoch_per_rank(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6])
    else:
        resume(sys.argv[2], int(sys.argv[3]), sys.argv[4])
