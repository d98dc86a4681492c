"""The models the training-step bench compares, resolved from names to what the bench needs.

Kept apart from the timing so that the Transformer++ baseline is matched to an xLSTM in one
place, and the batch a context runs at comes from the run config's curriculum as in training.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parent.parent


@dataclass
class ModelSpec:
    """What the bench needs to know of one model, whatever its family."""

    name: str
    family: str                                   # "xlstm" | "transformer"
    description: str
    params: int
    build: Callable                               # () -> nn.Module
    flops_per_token: Callable                     # context_len -> training FLOPs per token
    activation_checkpointing: bool
    stages: dict = field(default_factory=dict)    # context_len -> (micro_batch, grad_accum)
    vocab_size: int = 38
    tie_embeddings: bool = False
    matched_to: Optional[str] = None


class BenchUsageError(ValueError):
    """A benchmark option that cannot work (unknown model, bad context list)."""

    user_facing = True


def _xlstm_spec(name: str, ac_mode: str) -> ModelSpec:
    import torch

    from modeling import build_model, flops_per_token, load_model_config

    run_config = REPO / "configs" / f"{name}.yaml"
    stages, checkpointing = {}, False
    if run_config.is_file():
        from pretrain.config import load_run_config

        cfg = load_run_config(run_config)
        model_cfg, checkpointing = cfg.model, cfg.train.activation_checkpointing
        ga = cfg.train.grad_accum
        stages = {s.context_len: (s.micro_batch_size, s.grad_accum or ga) for s in cfg.curriculum.stages}
    elif name.endswith(".yaml") or (REPO / "configs" / "models" / f"{name}.yaml").is_file():
        model_cfg = load_model_config(name)
    else:
        known = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
        known += sorted(p.stem for p in (REPO / "configs" / "models").glob("*.yaml"))
        raise BenchUsageError(f"--models: unknown model {name!r}; use a run config or model preset name "
                              f"({', '.join(known)}) or transformer_<one of them>")
    if ac_mode != "config":
        checkpointing = ac_mode == "on"
    with torch.device("meta"):
        params = sum(p.numel() for p in build_model(model_cfg).parameters())
    description = (f"xLSTM d {model_cfg.d_model}, {model_cfg.num_blocks} blocks, {model_cfg.num_heads} heads of "
                   f"{model_cfg.inner_dim // model_cfg.num_heads}, chunk {model_cfg.chunk_size}")
    return ModelSpec(name, "xlstm", description, params, lambda: build_model(model_cfg),
                     lambda S: flops_per_token(model_cfg, S), checkpointing, stages, model_cfg.vocab_size,
                     model_cfg.tie_embeddings)


def _transformer_spec(name: str, ac_mode: str) -> ModelSpec:
    from bench.transformer_baseline import build_transformer, flops_per_token, match_parameter_count, parameter_count

    suffix = name[len("transformer_"):]
    candidates = [f"prot_xlstm_{suffix}", suffix]
    target_name = next((c for c in candidates if (REPO / "configs" / f"{c}.yaml").is_file()
                        or (REPO / "configs" / "models" / f"{c}.yaml").is_file()), suffix)
    target = _xlstm_spec(target_name, ac_mode)
    cfg = match_parameter_count(target.params, target.vocab_size, tie_embeddings=target.tie_embeddings)
    return ModelSpec(name, "transformer", cfg.describe(), parameter_count(cfg), lambda: build_transformer(cfg),
                     lambda S: flops_per_token(cfg, S), target.activation_checkpointing, target.stages,
                     cfg.vocab_size, cfg.tie_embeddings, matched_to=target_name)


def resolve_model(name: str, ac_mode: str = "config") -> ModelSpec:
    if name.startswith("transformer_"):
        return _transformer_spec(name, ac_mode)
    return _xlstm_spec(name, ac_mode)


def plan_batch(context_len: int, tokens_per_step: int, stages: dict, max_micro_batch: int,
               micro_batch: Optional[int] = None) -> tuple[int, int]:
    """(micro_batch, grad_accum) holding tokens per step constant (at least one sequence)."""
    if micro_batch is None and context_len in stages:
        mb, ga = stages[context_len]
        if mb * ga * context_len == tokens_per_step:
            return mb, ga
    sequences = max(1, tokens_per_step // context_len)
    mb = micro_batch or min(max_micro_batch, sequences)
    return mb, max(1, sequences // mb)
