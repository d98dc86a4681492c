"""Official state-dict names of the papers' code and the one mapping of tensors, both ways.

All three official code bases build their models from the NX-AI xLSTM modules, so under the
family prefix (`FAMILY_PREFIX`) their tensors have the same names. The mapping is written once,
as tables of (this project's name, official name, transform); `key_table(cfg)` resolves them
for every tensor of `build_model(cfg)`, and `weights_to_official` / `weights_from_official`
both walk that one list.

Sources: the mLSTM block and model names are DESIGN.md section 11 (facts). The sLSTM names
are those of the NX-AI xLSTM sLSTM layer (`xlstm/blocks/slstm/layer.py`, `cell.py`) that
DNA-xLSTM builds on: gates `fgate`, `igate`, `zgate`, `ogate` (LinearHeadwiseExpand, weight
(heads, out, in)), whose forward reads `i, f = fgate(x_conv), igate(x_conv)` (so `fgate` feeds
the input gate); cell `_recurrent_kernel_` and `_bias_` stored in the layout of the backend
that wrote them ("cuda", what DNA-xLSTM configures: kernel (heads, Dh, 4 Dh), bias flat in
(head, gate, Dh) order; "vanilla": kernel (heads, 4 Dh, Dh), bias flat in (gate, head, Dh)
order); `group_norm`; block `ffn_norm`, `ffn.proj_up`, `ffn.proj_down`.
ASSUMPTION (RC parameter sharing, `rc_mode: param_sharing_halves`): the issue states the
official RC-PS models add `.submodule.`, `token_embedding.embedding.weight`,
`lm_head.lm_head.weight` and `complement_map` buffers; where `.submodule.` sits is not stated.
Taken here: right after each module the Caduceus-style RCPSWrapper wraps, i.e. after
`xlstm_norm`, `xlstm`, `ffn_norm`, `ffn` of a block and after `post_blocks_norm`
(`RCPS_WRAPPED_MODULES`, `RCPS_MODEL_KEYS`). Correct them here if a released checkpoint says
otherwise: both directions follow.

Every official norm weight is an offset (effective 1 + w); a model with
`norm_weight_offset: true` stores the same numbers, so conversion copies them bit for bit.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from pretrain.errors import ConversionError

FAMILY_PREFIX = {"protxlstm": "backbone.", "dnaxlstm": "model.backbone.", "chemxlstm": "model."}

COPY, NORM, SLSTM_RECURRENT, SLSTM_BIAS = "copy", "norm", "slstm_recurrent", "slstm_bias"
SLSTM_LAYOUTS = ("cuda", "vanilla")

MODEL_KEYS = (
    ("embedding.weight", "token_embedding.weight", COPY),
    ("final_norm.weight", "xlstm_block_stack.post_blocks_norm.weight", NORM),
    ("head.weight", "lm_head.weight", COPY),
)
BLOCK_OURS, BLOCK_OFFICIAL = "blocks.{b}.inner.", "xlstm_block_stack.blocks.{b}."
MLSTM_BLOCK_KEYS = (
    ("norm.weight", "xlstm_norm.weight", NORM),
    ("proj_up.weight", "xlstm.proj_up.weight", COPY),
    ("proj_up.bias", "xlstm.proj_up.bias", COPY),
    ("q_proj.weight", "xlstm.q_proj.weight", COPY),
    ("q_proj.bias", "xlstm.q_proj.bias", COPY),
    ("k_proj.weight", "xlstm.k_proj.weight", COPY),
    ("k_proj.bias", "xlstm.k_proj.bias", COPY),
    ("v_proj.weight", "xlstm.v_proj.weight", COPY),
    ("v_proj.bias", "xlstm.v_proj.bias", COPY),
    ("conv.conv.weight", "xlstm.conv1d.conv.weight", COPY),
    ("conv.conv.bias", "xlstm.conv1d.conv.bias", COPY),
    ("igate.weight", "xlstm.mlstm_cell.igate.weight", COPY),
    ("igate.bias", "xlstm.mlstm_cell.igate.bias", COPY),
    ("fgate.weight", "xlstm.mlstm_cell.fgate.weight", COPY),
    ("fgate.bias", "xlstm.mlstm_cell.fgate.bias", COPY),
    ("outnorm.weight", "xlstm.mlstm_cell.outnorm.weight", NORM),
    ("skip", "xlstm.learnable_skip", COPY),
    ("proj_down.weight", "xlstm.proj_down.weight", COPY),
    ("proj_down.bias", "xlstm.proj_down.bias", COPY),
)
SLSTM_BLOCK_KEYS = (
    ("norm.weight", "xlstm_norm.weight", NORM),
    ("conv.conv.weight", "xlstm.conv1d.conv.weight", COPY),
    ("conv.conv.bias", "xlstm.conv1d.conv.bias", COPY),
    ("gate_i.weight", "xlstm.fgate.weight", COPY),        # official name swap: fgate feeds i
    ("gate_f.weight", "xlstm.igate.weight", COPY),        # and igate feeds f
    ("gate_z.weight", "xlstm.zgate.weight", COPY),
    ("gate_o.weight", "xlstm.ogate.weight", COPY),
    ("cell.recurrent", "xlstm.slstm_cell._recurrent_kernel_", SLSTM_RECURRENT),
    ("cell.bias", "xlstm.slstm_cell._bias_", SLSTM_BIAS),
    ("outnorm.weight", "xlstm.group_norm.weight", NORM),
    ("ffn_norm.weight", "ffn_norm.weight", NORM),
    ("ffn_up.weight", "ffn.proj_up.weight", COPY),
    ("ffn_down.weight", "ffn.proj_down.weight", COPY),
)
RCPS_MODEL_KEYS = (
    ("embedding.weight", "token_embedding.embedding.weight", COPY),
    ("final_norm.weight", "xlstm_block_stack.post_blocks_norm.submodule.weight", NORM),
    ("head.weight", "lm_head.lm_head.weight", COPY),
)
RCPS_WRAPPED_MODULES = ("xlstm_norm", "xlstm", "ffn_norm", "ffn")
RCPS_COMPLEMENT_BUFFERS = ("token_embedding.complement_map", "lm_head.complement_map")
TIED_HEAD = "lm_head.weight"          # an official tied model stores the head under this name too

_BLOCK_NAME = re.compile(r"blocks\.(\d+)\.inner\.(.+)")


@dataclass(frozen=True)
class KeyMapping:
    ours: str
    official: str
    transform: str


def key_table(cfg) -> list[KeyMapping]:
    """The mapping of every tensor of `build_model(cfg)` (this project's state-dict names)."""
    import torch

    from modeling import build_model

    with torch.device("meta"):
        names = list(build_model(cfg).state_dict())
    return [_mapping(name, cfg) for name in names]


def _mapping(name: str, cfg) -> KeyMapping:
    halves = cfg.rc_mode == "param_sharing_halves"
    for ours, official, transform in (RCPS_MODEL_KEYS if halves else MODEL_KEYS):
        if name == ours:
            return KeyMapping(ours, official, transform)
    match = _BLOCK_NAME.fullmatch(name)
    if match:
        block, suffix = int(match.group(1)), match.group(2)
        table = SLSTM_BLOCK_KEYS if block in cfg.slstm_positions else MLSTM_BLOCK_KEYS
        for ours, official, transform in table:
            if suffix == ours:
                if halves:
                    module, _, rest = official.partition(".")
                    if module in RCPS_WRAPPED_MODULES:
                        official = f"{module}.submodule.{rest}"
                return KeyMapping(name, BLOCK_OFFICIAL.format(b=block) + official, transform)
    raise ConversionError(f"model tensor {name!r} has no official name (pretrain/official/keys.py): "
                          "this architecture has no counterpart in the official code")


def _to_official(tensor, transform: str, cfg):
    if transform == NORM and not cfg.norm_weight_offset:
        return tensor - 1
    if transform == SLSTM_BIAS:                          # (gate, head, Dh) -> cuda (head, gate, Dh)
        return tensor.reshape(4, cfg.slstm_num_heads, -1).transpose(0, 1).reshape(-1)
    return tensor


def _from_official(tensor, transform: str, cfg, slstm_layout: str):
    if transform == NORM and not cfg.norm_weight_offset:
        return tensor + 1
    if transform == SLSTM_RECURRENT and slstm_layout == "vanilla":    # (H, 4 Dh, Dh) -> (H, Dh, 4 Dh)
        return tensor.transpose(1, 2)
    if transform == SLSTM_BIAS:
        if slstm_layout == "vanilla":
            return tensor.reshape(4, -1)
        return tensor.reshape(cfg.slstm_num_heads, 4, -1).transpose(0, 1).reshape(4, -1)
    return tensor


def complement_buffer(cfg):
    import torch

    from modeling.dna_rc import complement_table

    return complement_table(cfg.vocab_size).to(torch.long)


def weights_to_official(state: dict, cfg) -> dict:
    """This project's state dict -> the official one (names without the family prefix)."""
    out = {}
    for entry in key_table(cfg):
        if entry.ours not in state:
            raise ConversionError(f"the weights lack {entry.ours!r}, which the model config needs")
        out[entry.official] = _to_official(state[entry.ours], entry.transform, cfg).contiguous()
    if cfg.tie_embeddings:
        out[TIED_HEAD] = out["token_embedding.weight"].clone()
    if cfg.rc_mode == "param_sharing_halves":
        for name in RCPS_COMPLEMENT_BUFFERS:
            out[name] = complement_buffer(cfg)
    return out


def weights_from_official(official: dict, cfg, where) -> dict:
    """The official state dict (prefix stripped) -> this project's, checked name by name and
    shape by shape against `build_model(cfg)`; nothing is dropped silently."""
    import torch

    from modeling import build_model

    with torch.device("meta"):
        expected = build_model(cfg).state_dict()
    table = key_table(cfg)
    layout = _slstm_layout(official, table, cfg, where)
    remaining = dict(official)
    if cfg.tie_embeddings and TIED_HEAD in remaining:
        head = remaining.pop(TIED_HEAD)
        if not torch.equal(head, official.get("token_embedding.weight", head)):
            raise ConversionError(f"{where}: the config ties the head to the embedding but "
                                  f"{TIED_HEAD} differs from token_embedding.weight")
    if cfg.rc_mode == "param_sharing_halves":
        for name in RCPS_COMPLEMENT_BUFFERS:
            if name in remaining and not torch.equal(remaining.pop(name).long(), complement_buffer(cfg)):
                raise ConversionError(f"{where}: buffer {name} is not the DNA complement map A<->T, "
                                      "C<->G of the vocabulary [CLS] [SEP] [BOS] [MASK] [PAD] "
                                      "[RESERVED] [UNK] A C G T N")
    state, missing, wrong = {}, [], []
    for entry in table:
        tensor = remaining.pop(entry.official, None)
        if tensor is None:
            missing.append(entry.official)
            continue
        tensor = _from_official(tensor, entry.transform, cfg, layout).contiguous()
        if tuple(tensor.shape) != tuple(expected[entry.ours].shape):
            wrong.append(f"{entry.official} {tuple(tensor.shape)} (expected {tuple(expected[entry.ours].shape)})")
        state[entry.ours] = tensor
    if missing or wrong or remaining:
        raise ConversionError(
            f"{where}: the weights do not match the checkpoint's own config: missing {missing[:3]}, "
            f"wrong shape {wrong[:3]}, unexpected {sorted(remaining)[:3]} (names in "
            "pretrain/official/keys.py)")
    return state


def _slstm_layout(official: dict, table, cfg, where) -> str:
    """"cuda" or "vanilla": told apart by the recurrent kernel's shape (H, Dh, 4 Dh) vs (H, 4 Dh, Dh)."""
    H = cfg.slstm_num_heads
    Dh = cfg.d_model // H
    for entry in table:
        if entry.transform == SLSTM_RECURRENT and entry.official in official:
            shape = tuple(official[entry.official].shape)
            if shape == (H, Dh, 4 * Dh):
                return "cuda"
            if shape == (H, 4 * Dh, Dh):
                return "vanilla"
            raise ConversionError(f"{where}: {entry.official} has shape {shape}; an sLSTM with {H} heads "
                                  f"of {Dh} stores ({H}, {Dh}, {4 * Dh}) (cuda) or ({H}, {4 * Dh}, {Dh}) (vanilla)")
    return "cuda"
