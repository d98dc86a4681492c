"""Where a run starts: fresh, auto-resumed from its own `latest`, or forked from another run.

Auto-resume restores everything (weights, optimizer, step, tokens, stage, loader position,
RNG), so the run continues at the exact sample. A fork (`--from CKPT`) takes weights and
optimizer state from another run; with `--stage k` it starts stage k from its first sample at
the token count where stage k begins (the LR schedule continues from there), otherwise it
continues at the checkpoint's exact position. Either way the model config must match.
"""
from __future__ import annotations

from typing import Optional

from pretrain.checkpoint import resolve_checkpoint
from pretrain.errors import CheckpointError, ConfigError


def differing_keys(saved: dict, current: dict) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [k for k in keys if saved.get(k, "<missing>") != current.get(k, "<missing>")]


def normalized_model_config(model_config: dict, where) -> dict:
    """A saved model config with the keys added since it was written set to their defaults,
    which by design (modeling.config) mean what the older version did."""
    from modeling import ModelConfig

    try:
        return ModelConfig.from_dict(dict(model_config)).to_dict()
    except Exception as err:
        raise CheckpointError(f"{where}: its model config is not valid for this version of modeling "
                              f"({err}); resume it with the version that wrote it") from None


def check_compatible(saved_state: dict, state, where) -> None:
    saved = normalized_model_config(saved_state["model_config"], where)
    differ = differing_keys(saved, state.model_config)
    if differ:
        shown = ", ".join(f"model.{k} (checkpoint {saved.get(k, '<missing>')!r}, "
                          f"config {state.model_config.get(k, '<missing>')!r})" for k in differ[:6])
        raise CheckpointError(f"{where}: the checkpoint was trained with another model config: {shown}. "
                              "Use the model config of that run, or a new train.out_dir to start fresh")
    if saved_state["world_size"] != state.world_size:
        ranks = saved_state["world_size"]
        raise CheckpointError(f"{where}: written by {ranks} ranks, this run has {state.world_size}; resume with "
                              f"the same number of processes (e.g. `bioxlstm launch local --nproc {ranks}`, or "
                              f"{ranks} SLURM tasks). A run cannot change its world size: its ZeRO optimizer "
                              "shards and data-loader positions are per rank")


def restore_run_position(state, engine, checkpoints, curriculum, own_tag: Optional[str],
                         fork_from: Optional[str], fork_stage: Optional[int]) -> str:
    """Fill `state` (and the engine) for the start of the loop; returns "fresh"|"resumed"|"forked"."""
    if fork_stage is not None and not 0 <= fork_stage < len(curriculum.stages):
        raise ConfigError(f"--stage {fork_stage}: the curriculum has stages 0..{len(curriculum.stages) - 1}")
    if fork_stage is not None and fork_from is None:
        raise ConfigError("--stage needs --from CKPT (the checkpoint to start that stage from)")
    if own_tag is not None:
        saved = _load(state, engine, checkpoints, checkpoints.root, own_tag)
        _load_keeping_identity(state, saved)
        _report(state, f"resumed from {checkpoints.root / own_tag}")
        return "resumed"
    if fork_from is None:
        return "fresh"
    root, tag = resolve_checkpoint(fork_from)
    saved = _load(state, engine, checkpoints, root, tag)
    if fork_stage is None:
        _load_keeping_identity(state, saved)
    else:
        plan = curriculum.stages[fork_stage]
        state.step, state.tokens, state.stage, state.loader_state = (plan.first_step, plan.start_tokens,
                                                                     fork_stage, None)
    _report(state, f"forked from {root / tag}")
    return "forked"


def _load_keeping_identity(state, saved: dict) -> None:
    """Take position, loader and RNG from the checkpoint; keep this run's rank and config hash."""
    rank, world_size, config_hash = state.rank, state.world_size, state.config_hash
    state.load_state_dict(saved)
    state.rank, state.world_size, state.config_hash = rank, world_size, config_hash


def _load(state, engine, checkpoints, root, tag) -> dict:
    import torch.distributed as dist

    import torch

    from pretrain.checkpoint import train_state_name, verify_checkpoint_on_all_ranks

    # peek at rank 0's train state before DeepSpeed loads anything, to refuse a wrong model early
    directory = root / tag
    verify_checkpoint_on_all_ranks(directory)
    peek = torch.load(directory / train_state_name(0), map_location="cpu", weights_only=False)
    check_compatible(peek, state, directory)
    saved = checkpoints.load(engine, tag, checkpoint_root=root, verify=False)
    if dist.is_initialized():
        dist.barrier()
    return saved


def _report(state, what: str) -> None:
    if state.rank == 0:
        print(f"bioxlstm train: {what} at step {state.step}, {state.tokens} tokens, stage {state.stage}",
              flush=True)
