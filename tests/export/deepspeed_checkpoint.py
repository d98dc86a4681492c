"""Write a real DeepSpeed checkpoint of a tiny Bio-xLSTM model from N gloo processes.

Each rank builds the same model (same seed), runs a few AdamW steps through a real DeepSpeed
engine (ZeRO stage 0-3; optionally with the DP x CP process groups of `pretrain.parallel`,
prepared as the trainer does so ZeRO shards over the context-parallel ranks too), saves the checkpoint in the run layout
`RUN/checkpoints/<tag>/` + `RUN/checkpoints/latest`, and returns the engine's logits on a fixed
probe batch after the last step: the numbers an export must reproduce.
"""
import datetime
import os
import pickle
import tempfile

import torch
import torch.multiprocessing as mp

COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=90)
TAG = "step_3"
STEPS = 3


def probe_batch(vocab_size: int, seq_len: int = 24, batch: int = 2):
    g = torch.Generator().manual_seed(1234)
    return torch.randint(4, vocab_size, (batch, seq_len), generator=g)


VAL_LOSS = 3.1416


def _save_through_checkpoint_manager(engine, rank, world_size, model_config, run_dir):
    """The trainer's checkpoint protocol: shards + one TrainState per rank + manifest + latest."""
    from pretrain.checkpoint import CheckpointManager
    from pretrain.train_state import TrainState

    state = TrainState(step=STEPS, tokens=STEPS * world_size * 2 * 16, stage=1, rank=rank,
                       world_size=world_size, config_hash="feedc0ffee", model_config=model_config,
                       last_val_loss=VAL_LOSS)
    CheckpointManager(os.path.join(run_dir, "checkpoints"), rank, keep=2).save(engine, state, {"config_hash": "feedc0ffee"})


def _train_and_save(rank, world_size, model_config, run_dir, zero_stage, cp_size, with_train_state):
    import deepspeed

    from modeling import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(model_config))
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": zero_stage},
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": 1.0,
        "steps_per_print": 10**6,
    }
    kwargs = {}
    if cp_size > 1:
        from pretrain.parallel import initialize_parallel

        context = initialize_parallel(cp_size)
        kwargs["mpu"] = context.mpu
        model = context.prepare_model_for_deepspeed(model, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2, betas=(0.9, 0.95), weight_decay=0.1)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config, **kwargs)
    vocab = model_config["vocab_size"]
    g = torch.Generator().manual_seed(100 + rank)
    for _ in range(STEPS):
        ids = torch.randint(4, vocab, (2, 17), generator=g)
        logits = engine(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), ids[:, 1:].reshape(-1))
        engine.backward(loss)
        engine.step()
    if with_train_state:
        _save_through_checkpoint_manager(engine, rank, world_size, model_config, run_dir)
    else:
        engine.save_checkpoint(os.path.join(run_dir, "checkpoints"), tag=TAG)
    engine.eval()
    with torch.no_grad():
        probe_logits = engine(probe_batch(vocab)).float()
    return probe_logits


def _entry(rank, world_size, workdir, args):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{workdir}/store", rank=rank,
                            world_size=world_size, timeout=COLLECTIVE_TIMEOUT)
    try:
        result = _train_and_save(rank, world_size, *args)
        with open(os.path.join(workdir, f"rank{rank}.pkl"), "wb") as fh:
            pickle.dump(result, fh)
    finally:
        dist.destroy_process_group()


def write_checkpoint(run_dir, model_config: dict, zero_stage: int, world_size: int = 2,
                     cp_size: int = 1, with_train_state: bool = False) -> torch.Tensor:
    """Train and save; returns rank 0's probe logits (B, S, V) fp32. `with_train_state` saves through pretrain.checkpoint.CheckpointManager with a TrainState, as
    the trainer does; otherwise plain `engine.save_checkpoint` (tag step_3)."""
    with tempfile.TemporaryDirectory() as workdir:
        mp.start_processes(_entry, args=(world_size, workdir, (model_config, str(run_dir), zero_stage, cp_size, with_train_state)),
                           nprocs=world_size, join=True, start_method="spawn")
        with open(os.path.join(workdir, "rank0.pkl"), "rb") as fh:
            return pickle.load(fh)
