"""ModelConfig: every architectural choice of an xLSTM model, strictly validated.

`from_dict` rejects unknown keys and wrong types by name, so a typo in a YAML file fails at load
time instead of silently training a different model.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from kernels.mlstm.chunking import is_valid_chunk_size
from modeling.errors import ModelConfigError

BIDIRECTIONAL_MODES = ("none", "weight_tied", "alternating")
BIDIRECTIONAL_RESIDUALS = ("branch", "whole_block")
REVERSED_BLOCKS = ("odd", "even")
REVERSED_POSITIONS = ("own", "flipped_index")
RC_MODES = ("none", "param_sharing", "param_sharing_halves", "post_hoc")
POSITION_ENCODINGS = ("none", "rope_inner", "rope_head")
ROUNDINGS = ("nearest", "up", "down")
SLSTM_GATE_LAYOUTS = ("full", "headwise")
RC_HALF_SLSTM_HEAD_ORDERS = ("kept", "reversed")
HEADS = ("lm", "mlm")


@dataclass
class ModelConfig:
    """Architecture of one model (DESIGN.md section 8 gives the paper's values).

    position_encoding: "rope_inner" = RoPE over the whole inner dim before the head split
    (Prot-xLSTM); "rope_head" = RoPE per head (DNA-xLSTM); "none".
    gates_after_rope: the mLSTM input and forget gates read concat[q, k, v] with q, k already
    rotated (official Prot-xLSTM) instead of before RoPE (official DNA-xLSTM, and the default).
    num_sequence_index: > 0 adds a learned embedding of the sequence index (running count of
    `cls_token_id`, clamped at num_sequence_index - 1), Prot-xLSTM's second position signal.
    proj_multiple_of / proj_rounding: mLSTM up-projection width = proj_factor * d_model rounded
    to a multiple ("up": official Prot-/Chem-xLSTM, 64; "down": official DNA-xLSTM, 64;
    "nearest" with 1: this project's former rule). ffn_multiple_of / ffn_rounding: the same
    for the sLSTM block's feed-forward (ffn_proj_factor).
    mlstm_bias: biases on the mLSTM up-projection, q/k/v and down-projection (official `m_bias`).
    norm_weight_offset: every layer norm stores its weight as an offset from 1 (effective
    1 + w), as the official xLSTM code does; official checkpoints then map bit for bit.
    slstm_gate_layout: "headwise" = block-diagonal per-head gate projections (official xLSTM);
    "full" = one dense map per gate pair (this project's former sLSTM).
    bidirectional: "weight_tied" runs each block on x and flip(x) with one set of weights;
    "alternating" runs every other block right to left. bidirectional_residual: "branch" =
    x + f(x) + flip(f(flip x)) (this project's form); "whole_block" = the block, residual
    included, on x and on flip(x), summed: 2x + f(x) + flip(f(flip x)) (official DNA-xLSTM).
    reversed_blocks: which blocks of an alternating stack run right to left ("even" = 0, 2, ...
    official; "odd" = 1, 3, ... this project's former rule). reversed_positions: RoPE positions
    of a right-to-left pass: "own" = each token keeps its position id; "flipped_index" = 0..S-1
    along the flipped sequence (official DNA-xLSTM; under context parallelism the global
    reversed index).
    rc_mode: "param_sharing" = this project's own reverse-complement equivariant design (full
    width, every block on x and RC(x), mLSTM included); "param_sharing_halves" = the official
    Caduceus-style RC parameter sharing of DNA-xLSTM: hidden = [forward half | RC half] of
    width d_model each, one shared width-d_model trunk per half, logits of both halves summed;
    "post_hoc" = average the predictions on x and RC(x). All need DNA token ids.
    rc_half_slstm_head_order (param_sharing_halves with sLSTM blocks): "reversed" = the official
    RC-PS sLSTM: for the RC half the layer (called with is_rc_flipped) reverses the order of the
    heads of the cell output, group-norms that and keeps the reversed order, so the model is not
    RC-equivariant; "kept" = every half's heads in their own order: exactly RC-equivariant.
    Defaults are the project's former behaviour, so saved configs without a newer key keep
    their meaning; the paper presets in configs/models/ set the official values.
    """

    vocab_size: int = 16
    d_model: int = 128
    num_blocks: int = 4
    num_heads: int = 4
    proj_factor: float = 2.0
    proj_multiple_of: int = 1
    proj_rounding: str = "nearest"
    mlstm_bias: bool = False
    gates_after_rope: bool = False
    norm_weight_offset: bool = False
    conv_kernel_size: int = 4
    qk_block_size: int = 4
    slstm_positions: list = field(default_factory=list)
    slstm_num_heads: int = 4
    slstm_gate_layout: str = "full"
    ffn_proj_factor: float = 1.3
    ffn_multiple_of: int = 64
    ffn_rounding: str = "up"
    bidirectional: str = "none"
    bidirectional_residual: str = "branch"
    reversed_blocks: str = "odd"
    reversed_positions: str = "own"
    rc_mode: str = "none"
    rc_half_slstm_head_order: str = "kept"
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
        """mLSTM up-projection width (official `_inner_embedding_dim`)."""
        return _rounded(self.proj_factor * self.d_model, self.proj_multiple_of, self.proj_rounding)

    @property
    def ffn_dim(self) -> int:
        """sLSTM block feed-forward width (official `_proj_up_dim` of the gated FFN)."""
        return _rounded(self.ffn_proj_factor * self.d_model, self.ffn_multiple_of, self.ffn_rounding)

    def rounds_up(self, what: str = "proj") -> bool:
        """Whether the official up/down rounding flag (`round_proj_up_dim_up`) reproduces this
        config's width: "nearest" becomes whichever of the two gives the same width."""
        rounding, multiple = getattr(self, f"{what}_rounding"), getattr(self, f"{what}_multiple_of")
        if rounding != "nearest":
            return rounding == "up"
        factor = self.proj_factor if what == "proj" else self.ffn_proj_factor
        width = self.inner_dim if what == "proj" else self.ffn_dim
        return _rounded(factor * self.d_model, multiple, "up") == width

    def reverses_block(self, index: int) -> bool:
        """Whether block `index` of an alternating stack runs right to left."""
        return index % 2 == (0 if self.reversed_blocks == "even" else 1)

    @property
    def causal(self) -> bool:
        return self.bidirectional == "none" and self.rc_mode == "none"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def architecture_dict(self) -> dict:
        """The fields that decide what the model computes from its weights: execution choices
        (chunk_size, kernel_backend) and options that do not apply to this stack (e.g. sLSTM
        fields without sLSTM blocks, RoPE fields without RoPE) are left out. Two configs with
        equal architecture dicts compute the same function of the same weights."""
        out = self.to_dict()
        # the rounding rules matter only through the widths they give
        out["inner_dim"], out["ffn_dim"] = self.inner_dim, self.ffn_dim
        drop = {"chunk_size", "kernel_backend", "proj_factor", "proj_multiple_of", "proj_rounding",
                "ffn_proj_factor", "ffn_multiple_of", "ffn_rounding"}
        has_mlstm = len(self.slstm_positions) < self.num_blocks
        rope = has_mlstm and self.position_encoding != "none"
        if not has_mlstm:
            drop |= {"num_heads", "inner_dim", "qk_block_size", "mlstm_bias", "gates_after_rope",
                     "position_encoding"}
        if not rope:
            drop |= {"rope_theta", "max_position_id", "gates_after_rope", "reversed_positions"}
        if not self.slstm_positions:
            drop |= {"slstm_num_heads", "slstm_gate_layout", "ffn_dim"}
        if self.bidirectional != "weight_tied":
            drop.add("bidirectional_residual")
        if self.bidirectional != "alternating":
            drop.add("reversed_blocks")
        if self.bidirectional == "none" or self.rc_mode == "param_sharing":
            drop.add("reversed_positions")
        if self.num_sequence_index == 0:
            drop.add("cls_token_id")
        if self.rc_mode != "param_sharing_halves" or not self.slstm_positions:
            drop.add("rc_half_slstm_head_order")
        out["slstm_positions"] = sorted(self.slstm_positions)
        return {k: v for k, v in out.items() if k not in drop}

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
                     "qk_block_size", "slstm_num_heads", "proj_multiple_of", "ffn_multiple_of"):
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
        for name, allowed in (("proj_rounding", ROUNDINGS), ("ffn_rounding", ROUNDINGS),
                              ("slstm_gate_layout", SLSTM_GATE_LAYOUTS),
                              ("bidirectional_residual", BIDIRECTIONAL_RESIDUALS),
                              ("reversed_blocks", REVERSED_BLOCKS),
                              ("reversed_positions", REVERSED_POSITIONS),
                              ("rc_half_slstm_head_order", RC_HALF_SLSTM_HEAD_ORDERS)):
            need(getattr(self, name) in allowed,
                 f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        need(self.ffn_proj_factor > 0, f"ffn_proj_factor must be > 0, got {self.ffn_proj_factor}")
        inner = self.inner_dim
        need(inner >= 1, f"inner dim (proj_factor x d_model rounded {self.proj_rounding} to a "
                         f"multiple of {self.proj_multiple_of}) is {inner}: raise proj_factor")
        if self.slstm_positions:
            need(self.ffn_dim >= 1, f"ffn dim (ffn_proj_factor x d_model rounded {self.ffn_rounding} "
                                    f"to a multiple of {self.ffn_multiple_of}) is 0: raise ffn_proj_factor")
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
        if self.rc_mode == "param_sharing_halves":
            need(self.num_sequence_index == 0,
                 "rc_mode=param_sharing_halves: num_sequence_index must be 0")
        need(self.rc_mode == "param_sharing_halves" or self.rc_half_slstm_head_order == "kept",
             f"rc_half_slstm_head_order={self.rc_half_slstm_head_order!r} applies to "
             "rc_mode=param_sharing_halves only (there is no RC half otherwise): set it to 'kept'")
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


def _rounded(value: float, multiple: int, rounding: str) -> int:
    """`value` rounded to a multiple of `multiple` (official xLSTM UpProjConfigMixin for up/down)."""
    steps = value / multiple
    if rounding == "up":
        steps = math.ceil(steps)
    elif rounding == "down":
        steps = math.floor(steps)
    else:
        steps = round(steps)
    return int(steps * multiple)


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
