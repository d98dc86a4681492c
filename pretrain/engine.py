"""The DeepSpeed engine around a model: config, optimizer, activation checkpointing, loss.

The optimizer is torch AdamW handed to DeepSpeed as a client optimizer (ZeRO shards its
state); weight decay applies to matrices only. The learning rate is set by the training loop
from `pretrain.schedule` each step (a function of tokens), not by a DeepSpeed scheduler, so it
is continuous across curriculum stages and needs no scheduler state in checkpoints.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def resolve_dtype(dtype: str) -> str:
    if dtype == "auto":
        return "bf16" if torch.cuda.is_available() else "fp32"
    return dtype


def deepspeed_config(train_cfg, micro_batch_size: int, grad_accum: int, dp_size: int) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": float(train_cfg.grad_clip),
        "zero_optimization": {"stage": int(train_cfg.zero_stage)},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if resolve_dtype(train_cfg.dtype) == "bf16":
        config["bf16"] = {"enabled": True}
    return config


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each block's activations in the backward pass (`model.blocks`, INTERFACES.md).

    The block's `forward` is wrapped in place, so parameter names and the state dict stay
    those of the plain model (exports and checkpoints do not change)."""
    for block in model.blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def optimizer_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        shape = getattr(param, "ds_shape", param.shape)   # ZeRO-3 partitioned params keep their shape here
        (decay if len(shape) >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_engine(model: torch.nn.Module, train_cfg, parallel, micro_batch_size: int, grad_accum: int):
    """deepspeed.initialize with the run's process groups; returns (engine, ds_config)."""
    import deepspeed

    ds_config = deepspeed_config(train_cfg, micro_batch_size, grad_accum, parallel.dp_size)
    if train_cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    model = parallel.prepare_model_for_deepspeed(model, ds_config)
    optimizer = torch.optim.AdamW(optimizer_param_groups(model, train_cfg.weight_decay), lr=train_cfg.lr,
                                  betas=tuple(train_cfg.betas), foreach=False)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config, mpu=parallel.mpu)
    return engine, ds_config


def set_stage_batch(engine, micro_batch_size: int, grad_accum: int, dp_size: int) -> None:
    """Tell DeepSpeed the micro-batch and accumulation of a new curriculum stage."""
    engine.set_train_micro_batch_size(micro_batch_size)
    engine.set_train_batch_size(micro_batch_size * grad_accum * dp_size)


def set_learning_rate(engine, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


def summed_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of cross-entropies over the tokens whose label is not -100 (fp32)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
