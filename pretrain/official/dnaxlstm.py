"""DNA-xLSTM (ml-jku/DNA-xLSTM) checkpoints, both ways.

Layout (DESIGN.md section 11): a PyTorch Lightning `.ckpt`; the weights in
`ckpt["state_dict"]` prefixed `model.backbone.`, the model config in
`ckpt["hyper_parameters"]["model"]["config"]`: the keyword arguments of the official
`xLSTMConfig` (models/dna_xlstm/modelling_xlstm.py), the keys of configs/model/xlstm.yaml.
The checkpoint is read with the allow-listing unpickler (`safe_unpickle.py`): the official
training (Lightning 1.8.6, hydra) pickles hyper_parameters as an omegaconf DictConfig next to
`loops`, `callbacks`, `optimizer_states`, `lr_schedulers`; only `state_dict` and the model
section are used. The model config comes from hyper_parameters and/or a `model_config.json`
(the file the official downstream scripts pass as `model.config_path`, a model section or the
bare config): `--model-config PATH`, else the one beside the .ckpt (or beside its
`checkpoints/` directory). Where both exist they must agree key by key (keys that do not change
the model excepted), else the conversion stops naming the key.

The official config, key by key (`xLSTMConfig` defaults when absent):
  d_model, n_layer -> num_blocks, vocab_size (12..16: the DNA vocabulary; the official model
  uses it unpadded), m_num_heads -> num_heads, m_proj_factor -> proj_factor (the official
  mLSTM rounds the width down to a multiple of 64), m_qkv_proj_blocksize -> qk_block_size,
  m_conv1d_kernel_size / s_conv1d_kernel_size -> conv_kernel_size (one value here: refused
  when a mixed stack has two), m_bias -> mlstm_bias, m_position_embeddings -> rope_head (RoPE
  per head, theta 5e5, gates from q, k before RoPE; DESIGN.md section 8) or none,
  s_lstm_at -> slstm_positions, s_num_heads -> slstm_num_heads (gates block-diagonal per head),
  s_proj_factor / s_round_proj_up_to_multiple_of / s_round_proj_up_dim_up -> ffn_proj_factor /
  ffn_multiple_of / ffn_rounding, bidirectional (+ bidirectional_alternating) -> weight_tied
  whole-block or alternating with the even blocks reversed, reversed passes at RoPE positions
  0..S-1 along the flipped sequence; rcps -> param_sharing_halves with the RC half's sLSTM heads
  reversed (rc_half_slstm_head_order: reversed, the official layer's is_rc_flipped; sLSTM
  stacks only, as the official code); complement_map must be the DNA complement map.
  Must keep their defaults: m_conv1d_causal, s_conv1d_causal (true), m_backend_bidirectional,
  s_position_embeddings (false). Ignored (no effect on the model): tie_weights (the official
  model never ties its head), max_length, pad_vocab_size_multiple, m_backend, m_chunk_size,
  dropout, and keys starting with "_" (hydra's _target_).
ASSUMPTIONS (not stated in DESIGN.md or the issue; `WRITTEN_NAMES`): the hydra model section
written back is {"_name_": "xlstm_lm", "config": {"_target_":
"models.dna_xlstm.modelling_xlstm.xLSTMConfig", ...}}, in the .ckpt's hyper_parameters and as
model_config.json next to it; the .ckpt goes to checkpoints/last.ckpt.
"""
from __future__ import annotations

from pathlib import Path

from pretrain.errors import ConversionError
from pretrain.official.files import (
    OfficialCheckpoint, OfficialConfig, load_training_checkpoint, read_json, strip_prefix, tensor_dict,
)
from pretrain.official.keys import FAMILY_PREFIX

FAMILY = "dnaxlstm"
WRITTEN_NAMES = {"model_name": "xlstm_lm", "config_target": "models.dna_xlstm.modelling_xlstm.xLSTMConfig",
                 "checkpoint": "checkpoints/last.ckpt", "model_config": "model_config.json"}
ROPE_THETA = 500000.0              # DESIGN.md section 8: RoPE per head, theta 5e5
MAX_POSITION_ID = 1 << 20          # the official model does not clamp; this is ours, far past 32k contexts
MLSTM_ROUNDING = (64, "down")      # official DNA xLSTMConfig: round_proj_up_to_multiple_of 64, dim_up False
IGNORED = ("tie_weights", "max_length", "pad_vocab_size_multiple", "m_backend", "m_chunk_size", "dropout")
REPRESENTATION_ONLY = ("norm_weight_offset", "tie_embeddings", "max_position_id", "head")
DEFAULTS = dict(d_model=256, n_layer=4, vocab_size=16, m_conv1d_kernel_size=4, m_qkv_proj_blocksize=4,
                m_num_heads=4, m_proj_factor=2.0, m_position_embeddings=False, m_bias=False, s_num_heads=4,
                s_conv1d_kernel_size=4, s_lstm_at=[], s_proj_factor=1.3, s_round_proj_up_dim_up=True,
                s_round_proj_up_to_multiple_of=64, m_conv1d_causal=True, s_conv1d_causal=True,
                m_backend_bidirectional=False, s_position_embeddings=False, bidirectional=False,
                bidirectional_alternating=False, rcps=False, complement_map=None)


def model_config_from_official(data: dict, where: str) -> dict:
    c = OfficialConfig(data, where)
    c.ignore(*IGNORED, *[key for key in data if key.startswith("_")])
    for key in ("m_conv1d_causal", "s_conv1d_causal", "m_backend_bidirectional", "s_position_embeddings"):
        c.only(key, DEFAULTS[key], (DEFAULTS[key],), bool)
    get = lambda key, kind: c.get(key, DEFAULTS[key], kind)   # noqa: E731
    num_blocks, vocab = get("n_layer", int), get("vocab_size", int)
    if not 12 <= vocab <= 16:
        c.refuse("vocab_size", vocab, "is not the DNA vocabulary ([CLS] [SEP] [BOS] [MASK] [PAD] "
                                      "[RESERVED] [UNK] A C G T N, 12 ids, padded up to 16 at most)")
    slstm = get("s_lstm_at", list)
    if not all(isinstance(b, int) and 0 <= b < num_blocks for b in slstm):
        c.refuse("s_lstm_at", slstm, f"must list block indices in [0, {num_blocks})")
    has_mlstm, has_slstm = len(set(slstm)) < num_blocks, bool(slstm)
    conv_m, conv_s = get("m_conv1d_kernel_size", int), get("s_conv1d_kernel_size", int)
    if has_mlstm and has_slstm and conv_m != conv_s:
        c.refuse("s_conv1d_kernel_size", conv_s, f"differs from m_conv1d_kernel_size={conv_m}: this "
                                                  "project has one conv_kernel_size for both block kinds")
    conv = conv_m if has_mlstm else conv_s
    if conv < 1:
        c.refuse("m_conv1d_kernel_size" if has_mlstm else "s_conv1d_kernel_size", conv,
                 "(no causal conv) is not implemented here")
    bidirectional = get("bidirectional", bool)
    alternating = get("bidirectional_alternating", bool)
    if alternating and not bidirectional:
        c.refuse("bidirectional_alternating", True, "without bidirectional=true has no defined meaning")
    rcps = get("rcps", bool)
    if rcps and has_mlstm:
        c.refuse("rcps", True, "with mLSTM blocks: the official RC parameter sharing covers sLSTM models only")
    complement = get("complement_map", None)
    if complement:
        if not _is_dna_complement_map(complement):
            c.refuse("complement_map", complement, "is not the DNA complement map (A7<->T10, C8<->G9)")
    rope = get("m_position_embeddings", bool)
    model = dict(
        vocab_size=vocab, d_model=get("d_model", int), num_blocks=num_blocks,
        num_heads=get("m_num_heads", int), proj_factor=get("m_proj_factor", float),
        proj_multiple_of=MLSTM_ROUNDING[0], proj_rounding=MLSTM_ROUNDING[1],
        qk_block_size=get("m_qkv_proj_blocksize", int), conv_kernel_size=conv, mlstm_bias=get("m_bias", bool),
        gates_after_rope=False, norm_weight_offset=True,
        position_encoding="rope_head" if rope else "none", rope_theta=ROPE_THETA, max_position_id=MAX_POSITION_ID,
        slstm_positions=sorted(set(slstm)), slstm_num_heads=get("s_num_heads", int), slstm_gate_layout="headwise",
        ffn_proj_factor=get("s_proj_factor", float), ffn_multiple_of=get("s_round_proj_up_to_multiple_of", int),
        ffn_rounding="up" if get("s_round_proj_up_dim_up", bool) else "down",
        tie_embeddings=False, head="mlm" if bidirectional or rcps else "lm",
        rc_mode="param_sharing_halves" if rcps else "none",
        rc_half_slstm_head_order="reversed" if rcps else "kept")
    if bidirectional:
        model.update(bidirectional="alternating" if alternating else "weight_tied",
                     bidirectional_residual="whole_block", reversed_blocks="even",
                     reversed_positions="flipped_index")
    c.finish()
    return model


def _is_dna_complement_map(mapping) -> bool:
    from modeling.dna_rc import complement_table

    table = complement_table(16).tolist()
    try:
        return isinstance(mapping, dict) and all(int(v) == table[int(k)] for k, v in mapping.items())
    except (ValueError, TypeError, IndexError):
        return False


def official_config(cfg, max_length: int = 1024) -> dict:
    """The xLSTMConfig keyword arguments for this project's model config."""
    from modeling.dna_rc import complement_table

    if cfg.rc_mode not in ("none", "param_sharing_halves"):
        raise ConversionError(f"rc_mode={cfg.rc_mode!r} has no DNA-xLSTM counterpart (the official RC "
                              "parameter sharing is rc_mode=param_sharing_halves)")
    if cfg.position_encoding == "rope_inner":
        raise ConversionError("position_encoding=rope_inner has no DNA-xLSTM counterpart (RoPE per head)")
    out = {
        "d_model": cfg.d_model, "n_layer": cfg.num_blocks, "tie_weights": False, "max_length": max_length,
        "vocab_size": cfg.vocab_size, "pad_vocab_size_multiple": 8,
        "m_conv1d_kernel_size": cfg.conv_kernel_size, "m_conv1d_causal": True,
        "m_qkv_proj_blocksize": cfg.qk_block_size, "m_num_heads": cfg.num_heads, "m_proj_factor": cfg.proj_factor,
        "m_backend": "chunkwise", "m_chunk_size": 1024,
        "m_position_embeddings": cfg.position_encoding == "rope_head", "m_bias": cfg.mlstm_bias,
        "s_num_heads": cfg.slstm_num_heads, "s_conv1d_kernel_size": cfg.conv_kernel_size, "s_conv1d_causal": True,
        "s_lstm_at": sorted(cfg.slstm_positions), "s_proj_factor": cfg.ffn_proj_factor,
        "s_round_proj_up_dim_up": cfg.rounds_up("ffn"),
        "s_round_proj_up_to_multiple_of": cfg.ffn_multiple_of, "s_position_embeddings": False, "dropout": 0.0,
        "bidirectional": cfg.bidirectional != "none", "bidirectional_alternating": cfg.bidirectional == "alternating",
        "m_backend_bidirectional": False, "rcps": cfg.rc_mode == "param_sharing_halves",
        "complement_map": {str(i): j for i, j in enumerate(complement_table(cfg.vocab_size).tolist())},
    }
    return out


def _hydra_model_section(config: dict) -> dict:
    return {"_name_": WRITTEN_NAMES["model_name"], "config": {"_target_": WRITTEN_NAMES["config_target"], **config}}


def read_back(cfg) -> dict:
    """The model config the reader derives from what `write` writes for `cfg`."""
    return model_config_from_official(official_config(cfg), "dnaxlstm config")


def read(src: Path, model_config_path: str | None = None, **_) -> OfficialCheckpoint:
    from data_pipeline.tokenizers import DNATokenizer

    if src.is_dir():
        found = sorted(src.glob("*.ckpt")) or sorted(src.glob("checkpoints/*.ckpt"))
        if len(found) != 1:
            raise ConversionError(f"{src}: pass the DNA-xLSTM .ckpt file itself (found "
                                  f"{[p.name for p in found] or 'no .ckpt file'})")
        src = found[0]
    ckpt = load_training_checkpoint(src)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConversionError(f"{src}: not a PyTorch Lightning checkpoint (no 'state_dict' entry)")
    hyper_parameters = ckpt.get("hyper_parameters")
    in_ckpt = hyper_parameters.get("model") if isinstance(hyper_parameters, dict) else None
    ckpt_where = f"{src} hyper_parameters.model"
    json_path = Path(model_config_path) if model_config_path is not None else _model_config_beside(src)
    in_json = read_json(json_path) if json_path is not None else None
    if not isinstance(in_ckpt, dict) and in_json is None:
        raise ConversionError(f"{src}: holds no hyper_parameters.model.config and no "
                              f"{WRITTEN_NAMES['model_config']} lies beside it; pass --model-config "
                              "model_config.json (the run's model section)")
    if isinstance(in_ckpt, dict) and in_json is not None:
        check_same_model(_config_of(in_ckpt), f"{ckpt_where}.config", _config_of(in_json), str(json_path))
    section, where = (in_ckpt, ckpt_where) if isinstance(in_ckpt, dict) else (in_json, str(json_path))
    config = _config_of(section)
    model_config = model_config_from_official(config, f"{where}.config" if "config" in section else where)
    weights = strip_prefix(tensor_dict(ckpt["state_dict"], str(src)), FAMILY_PREFIX[FAMILY], str(src))
    sources = [src] + ([json_path] if in_json is not None else [])
    return OfficialCheckpoint(model_config, weights, DNATokenizer().to_dict(), sources, config)


def _config_of(section: dict):
    """The xLSTMConfig keys of a hydra model section ({"_name_", "config"}) or a bare config."""
    return section.get("config", section)


def _model_config_beside(src: Path) -> Path | None:
    """model_config.json next to the .ckpt, or next to its checkpoints/ directory (our layout)."""
    places = [src.parent] + ([src.parent.parent] if src.parent.name == "checkpoints" else [])
    found = [place / WRITTEN_NAMES["model_config"] for place in places]
    return next((path for path in found if path.is_file()), None)


def check_same_model(first: dict, first_where: str, second, second_where: str) -> None:
    """The two official configs describe one model: every key that changes the model agrees
    (an absent key counts as its xLSTMConfig default)."""
    if not isinstance(second, dict):
        raise ConversionError(f"{second_where}: expected a mapping, got {type(second).__name__}")
    if not isinstance(first, dict):
        raise ConversionError(f"{first_where}: expected a mapping, got {type(first).__name__}")
    for key in sorted(set(first) | set(second), key=str):
        if str(key).startswith("_") or key in IGNORED:
            continue
        a, b = (_comparable(key, c.get(key, DEFAULTS.get(key))) for c in (first, second))
        if a != b and not (key == "complement_map" and None in (a, b)):
            raise ConversionError(
                f"{second_where}: {key}={second.get(key, DEFAULTS.get(key))!r} but {first_where} has "
                f"{key}={first.get(key, DEFAULTS.get(key))!r}; the two model configs must describe one model "
                "(pass the matching --model-config or remove the stray file)")


def _comparable(key: str, value):
    if key == "complement_map" and isinstance(value, dict):
        try:
            return {int(k): int(v) for k, v in value.items()}
        except (TypeError, ValueError):
            return value
    return value


def check_tokenizer(tokenizer: dict) -> None:
    if tokenizer.get("type") != "dna":
        raise ConversionError(f"the model's tokenizer is {tokenizer.get('type')!r}: the dnaxlstm format "
                              "holds DNA models")


def write(out: Path, weights: dict, cfg, tokenizer: dict, context_length: int | None = None) -> list[str]:
    """`out/checkpoints/last.ckpt` (state_dict + hyper_parameters) and `out/model_config.json`."""
    import json

    import torch

    check_tokenizer(tokenizer)
    section = _hydra_model_section(official_config(cfg, context_length or 1024))
    prefix = FAMILY_PREFIX[FAMILY]
    checkpoint = out / WRITTEN_NAMES["checkpoint"]
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {prefix + name: tensor for name, tensor in weights.items()},
                "hyper_parameters": {"model": section}}, checkpoint)
    (out / WRITTEN_NAMES["model_config"]).write_text(json.dumps(section, indent=1) + "\n")
    return [WRITTEN_NAMES["checkpoint"], WRITTEN_NAMES["model_config"]]
