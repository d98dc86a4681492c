"""ModelConfig: every architectural choice of an xLSTM model, strictly validated.

`from_dict` rejects unknown keys and wrong types by name, so a typo in a YAML file fails at load
time instead of silently training a different model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from kernels.mlstm.chunking import is_valid_chunk_size
from modeling.errors import ModelConfigError

BIDIRECTIONAL_MODES = ("none", "weight_tied", "alternating")
RC_MODES = ("none", "param_sharing", "post_hoc")
POSITION_ENCODINGS = ("none", "rope_inner", "rope_head")
HEADS = ("lm", "mlm")


@dataclass
class ModelConfig:
    """Architecture of one model (DESIGN.md section 8 gives the paper's values).

    position_encoding: "rope_inner" = RoPE over the whole inner dim before the head split
    (Prot-xLSTM); "rope_head" = RoPE per head (DNA-xLSTM); "none".
    num_sequence_index: > 0 adds a learned embedding of the sequence index (running count of
    `cls_token_id`, clamped at num_sequence_index - 1), Prot-xLSTM's second position signal.
    rc_mode: "param_sharing" = reverse-complement equivariant embedding, blocks and head;
    "post_hoc" = average the predictions on x and RC(x). Both need DNA token ids.
    """

    vocab_size: int = 16
    d_model: int = 128
    num_blocks: int = 4
    num_heads: int = 4
    proj_factor: float = 2.0
    conv_kernel_size: int = 4
    qk_block_size: int = 4
    slstm_positions: list = field(default_factory=list)
    slstm_num_heads: int = 4
    ffn_proj_factor: float = 1.3
    bidirectional: str = "none"
    rc_mode: str = "none"
    position_encoding: str = "none"
    rope_theta: float = 500000.0
    max_position_id: int = 2047
    num_sequence_index: int = 0
    cls_token_id: int = 0
    tie_embeddings: bool = False
    head: str = "lm"
    chunk_size: int | str = "auto"        # "auto": the kernels' rule from the head dim
    kernel_backend: str = "auto"
    norm_eps: float = 1e-5

    @property
    def inner_dim(self) -> int:
        return int(round(self.proj_factor * self.d_model))

    @property
    def causal(self) -> bool:
        return self.bidirectional == "none" and self.rc_mode == "none"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        if not isinstance(data, dict):
            raise ModelConfigError(f"model config must be a mapping, got {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ModelConfigError(
                f"model config: unknown key(s) {unknown}; known keys are {sorted(known)}")
        defaults = cls()
        values = {}
        for name, value in data.items():
            values[name] = _coerce(name, value, getattr(defaults, name))
        return cls(**values)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ModelConfigError(f"model config: {msg}")

        need(is_valid_chunk_size(self.chunk_size),
             f"chunk_size must be 'auto' or a positive int, got {self.chunk_size!r}")
        for name in ("vocab_size", "d_model", "num_blocks", "num_heads", "conv_kernel_size",
                     "qk_block_size", "slstm_num_heads"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                 f"{name} must be a positive int, got {value!r}")
        need(self.proj_factor > 0, f"proj_factor must be > 0, got {self.proj_factor}")
        need(self.bidirectional in BIDIRECTIONAL_MODES,
             f"bidirectional must be one of {BIDIRECTIONAL_MODES}, got {self.bidirectional!r}")
        need(self.rc_mode in RC_MODES, f"rc_mode must be one of {RC_MODES}, got {self.rc_mode!r}")
        need(self.position_encoding in POSITION_ENCODINGS,
             f"position_encoding must be one of {POSITION_ENCODINGS}, got {self.position_encoding!r}")
        need(self.head in HEADS, f"head must be one of {HEADS}, got {self.head!r}")
        inner = self.inner_dim
        need(inner % self.num_heads == 0,
             f"inner dim {inner} (proj_factor x d_model) must be divisible by num_heads {self.num_heads}")
        need(inner % self.qk_block_size == 0,
             f"inner dim {inner} must be divisible by qk_block_size {self.qk_block_size}")
        need(self.d_model % self.slstm_num_heads == 0,
             f"d_model {self.d_model} must be divisible by slstm_num_heads {self.slstm_num_heads}")
        for p in self.slstm_positions:
            need(isinstance(p, int) and 0 <= p < self.num_blocks,
                 f"slstm_positions entries must be block indices in [0, {self.num_blocks}), got {p!r}")
        need(len(set(self.slstm_positions)) == len(self.slstm_positions),
             f"slstm_positions has duplicates: {self.slstm_positions}")
        if self.position_encoding == "rope_inner":
            need(inner % 2 == 0, f"rope_inner needs an even inner dim, got {inner}")
        if self.position_encoding == "rope_head":
            need((inner // self.num_heads) % 2 == 0, "rope_head needs an even head dim")
        need(self.rope_theta > 0, f"rope_theta must be > 0, got {self.rope_theta}")
        need(self.max_position_id >= 0, f"max_position_id must be >= 0, got {self.max_position_id}")
        need(self.num_sequence_index >= 0, "num_sequence_index must be >= 0")
        if self.rc_mode != "none":
            need(self.vocab_size >= 12,
                 "rc_mode needs the DNA vocabulary (A7 C8 G9 T10 N11): vocab_size >= 12")
            need(self.head == "mlm",
                 f"rc_mode={self.rc_mode!r} looks at both strands, so the model is not causal: "
                 "set head: mlm")
        if self.rc_mode == "param_sharing":
            need(self.d_model % 2 == 0, "rc_mode=param_sharing needs an even d_model")
            need(self.bidirectional == "none",
                 "rc_mode=param_sharing already runs every block on x and RC(x) (both "
                 "directions): set bidirectional: none")
            need(self.num_sequence_index == 0, "rc_mode=param_sharing: num_sequence_index must be 0")
        if self.head == "mlm" and self.rc_mode == "none":
            need(self.bidirectional != "none",
                 "head=mlm needs a bidirectional model: set bidirectional to weight_tied or alternating")
        if self.head == "lm":
            need(self.bidirectional == "none",
                 "head=lm (causal next-token loss) needs bidirectional: none; use head: mlm")


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Accept a YAML/JSON value for field `name` if it has the default's type (int for float ok)."""
    if name == "chunk_size":                  # "auto" or an int; validate() checks the value
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, (list, tuple))
        value = list(value) if ok else value
    else:
        ok = True
    if not ok:
        raise ModelConfigError(
            f"model config: {name} must be of type {type(default).__name__}, got {value!r} "
            f"({type(value).__name__})")
    return value
