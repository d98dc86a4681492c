"""Prot-xLSTM (ml-jku/Prot-xLSTM) checkpoints, both ways.

Layout (DESIGN.md section 11): a directory with `config.json` (asdict of the official
`xLSTMLMModelConfig`) and `pytorch_model.bin` (`save_pretrained`; a Hugging Face Trainer run
may leave `model.safetensors` instead); tensor names prefixed `backbone.`.

The official config, key by key (`CONFIG_TABLE`; defaults are the official dataclass defaults,
used when a key is absent as the official loader does):
  embedding_dim -> d_model, num_blocks, vocab_size (38: the protein vocabulary),
  bias -> mlstm_bias, tie_weights -> tie_embeddings, add_post_blocks_norm (must be true),
  position_embeddings "rot_1d" -> rope_inner over the whole inner dim with the gates taken
  after RoPE (the official cell receives the rotated q, k), "none" -> none; "abs_1d", "abs_2d",
  "rot", "rot_2d" are refused; rope_base_frequency -> rope_theta; max_position_embeddings - 1
  -> max_position_id (the official data loader clamps positions there);
  mlstm_block.mlstm: num_heads, proj_factor, round_proj_up_to_multiple_of -> proj_multiple_of,
  round_proj_up_dim_up -> proj_rounding up/down, conv1d_kernel_size, qkv_proj_blocksize
  -> qk_block_size; mlstm_block.feedforward must be absent, slstm_at empty.
  Without effect on the model (ignored): context_length, dropout, checkpoint_blocks,
  weight_decay_on_embedding, add_embedding_dropout, max_seq_position_embeddings, _block_map
  (must be all mLSTM), slstm_block, and in mlstm: embedding_dim and bias (overwritten from the
  top level by the official code), dropout, context_length, backend, chunk_size,
  return_last_state and the derived _num_blocks, _block_idx, _inner_embedding_dim, _proj_up_dim.
Written back: the same fields; backend "chunkwise" with chunk_size 1024 and
max_seq_position_embeddings 512 as in the official default config; context_length as given.
"""
from __future__ import annotations

from pathlib import Path

from pretrain.errors import ConversionError
from pretrain.official.files import OfficialCheckpoint, OfficialConfig, load_pickle, read_json, strip_prefix, tensor_dict
from pretrain.official.keys import FAMILY_PREFIX

FAMILY = "protxlstm"
CONFIG_FILE = "config.json"
PICKLE_FILE, SAFETENSORS_FILE = "pytorch_model.bin", "model.safetensors"
POSITION_EMBEDDINGS = {"none": "none", "rot_1d": "rope_inner"}
PROTEIN_VOCAB_SIZE = 38
IGNORED_TOP = ("context_length", "dropout", "checkpoint_blocks", "weight_decay_on_embedding",
               "add_embedding_dropout", "max_seq_position_embeddings", "slstm_block")
IGNORED_MLSTM = ("embedding_dim", "bias", "dropout", "context_length", "backend", "chunk_size",
                 "return_last_state", "_num_blocks", "_block_idx", "_inner_embedding_dim", "_proj_up_dim")
# this project's fields that only say how the weights are stored, not what the model computes
REPRESENTATION_ONLY = ("norm_weight_offset",)
DEFAULT_CONTEXT_LENGTH = 2048


def model_config_from_official(data: dict, where: str) -> dict:
    top = OfficialConfig(data, where)
    position = top.only("position_embeddings", "none", tuple(POSITION_EMBEDDINGS), str)
    if not top.get("add_post_blocks_norm", True, bool):
        top.refuse("add_post_blocks_norm", False, "(no final norm) is not implemented here")
    if top.get("slstm_at", [], list):
        top.refuse("slstm_at", data["slstm_at"], "(sLSTM blocks) is not part of Prot-xLSTM")
    block_map = top.get("_block_map", None, str)
    if block_map and set(block_map.split(",")) != {"0"}:
        top.refuse("_block_map", block_map, "has non-mLSTM blocks")
    top.ignore(*IGNORED_TOP)
    block = OfficialConfig(top.need("mlstm_block", dict), f"{where} mlstm_block")
    if block.get("feedforward", None) is not None:
        block.refuse("feedforward", block.data["feedforward"], "(an FFN after the mLSTM) is not part of Prot-xLSTM")
    block.ignore("_num_blocks", "_block_idx")
    mlstm = OfficialConfig(block.need("mlstm", dict), f"{where} mlstm_block.mlstm")
    block.finish()
    conv = mlstm.get("conv1d_kernel_size", 4, int)
    if conv < 1:
        mlstm.refuse("conv1d_kernel_size", conv, "(no causal conv) is not implemented here")
    vocab = top.need("vocab_size", int)
    if vocab != PROTEIN_VOCAB_SIZE:
        top.refuse("vocab_size", vocab, f"differs from the Prot-xLSTM vocabulary of {PROTEIN_VOCAB_SIZE} ids")
    model = dict(
        vocab_size=vocab, d_model=top.get("embedding_dim", 128, int), num_blocks=top.get("num_blocks", 1, int),
        num_heads=mlstm.get("num_heads", 4, int), proj_factor=mlstm.get("proj_factor", 2.0, float),
        proj_multiple_of=mlstm.get("round_proj_up_to_multiple_of", 64, int),
        proj_rounding="up" if mlstm.get("round_proj_up_dim_up", True, bool) else "down",
        conv_kernel_size=conv, qk_block_size=mlstm.get("qkv_proj_blocksize", 4, int),
        mlstm_bias=top.get("bias", False, bool), gates_after_rope=True, norm_weight_offset=True,
        position_encoding=POSITION_EMBEDDINGS[position],
        rope_theta=top.get("rope_base_frequency", 10000, float),
        max_position_id=top.get("max_position_embeddings", 2048, int) - 1,
        tie_embeddings=top.get("tie_weights", False, bool), cls_token_id=0, head="lm")
    mlstm.ignore(*IGNORED_MLSTM)
    mlstm.finish()
    top.finish()
    return model


def official_config(cfg, context_length: int = DEFAULT_CONTEXT_LENGTH) -> dict:
    """asdict(xLSTMLMModelConfig) for this project's model config."""
    inverse = {ours: theirs for theirs, ours in POSITION_EMBEDDINGS.items()}
    if cfg.position_encoding not in inverse:
        raise ConversionError(f"position_encoding={cfg.position_encoding!r} has no Prot-xLSTM counterpart "
                              "(it has RoPE over the whole inner dim, rot_1d, or none)")
    theta = int(cfg.rope_theta) if float(cfg.rope_theta).is_integer() else cfg.rope_theta
    mlstm = {
        "proj_factor": cfg.proj_factor, "round_proj_up_dim_up": cfg.rounds_up("proj"),
        "round_proj_up_to_multiple_of": cfg.proj_multiple_of, "_proj_up_dim": cfg.inner_dim,
        "conv1d_kernel_size": cfg.conv_kernel_size, "qkv_proj_blocksize": cfg.qk_block_size,
        "num_heads": cfg.num_heads, "embedding_dim": cfg.d_model, "bias": cfg.mlstm_bias,
        "dropout": 0.0, "context_length": context_length, "backend": "chunkwise", "chunk_size": 1024,
        "return_last_state": False, "_num_blocks": cfg.num_blocks, "_inner_embedding_dim": cfg.inner_dim,
    }
    return {
        "mlstm_block": {"mlstm": mlstm}, "context_length": context_length, "num_blocks": cfg.num_blocks,
        "embedding_dim": cfg.d_model, "add_post_blocks_norm": True, "bias": cfg.mlstm_bias, "dropout": 0.0,
        "checkpoint_blocks": False, "_block_map": ",".join(["0"] * cfg.num_blocks),
        "vocab_size": cfg.vocab_size, "tie_weights": cfg.tie_embeddings, "weight_decay_on_embedding": False,
        "add_embedding_dropout": False, "position_embeddings": inverse[cfg.position_encoding],
        "max_position_embeddings": cfg.max_position_id + 1, "max_seq_position_embeddings": 512,
        "rope_base_frequency": theta,
    }


def read_back(cfg) -> dict:
    """The model config the reader derives from what `write` writes for `cfg`."""
    return model_config_from_official(official_config(cfg), "protxlstm config")


def read(src: Path, **_) -> OfficialCheckpoint:
    from data_pipeline.tokenizers import ProteinTokenizer

    root = src if src.is_dir() else src.parent
    if not (root / CONFIG_FILE).is_file():
        raise ConversionError(f"{src}: a Prot-xLSTM checkpoint is a directory with {CONFIG_FILE} and "
                              f"{PICKLE_FILE} (or {SAFETENSORS_FILE}); {root / CONFIG_FILE} is missing")
    config = read_json(root / CONFIG_FILE)
    model_config = model_config_from_official(config, str(root / CONFIG_FILE))
    present = [root / name for name in (PICKLE_FILE, SAFETENSORS_FILE) if (root / name).is_file()]
    if len(present) != 1:
        raise ConversionError(f"{root}: expected exactly one weights file, {PICKLE_FILE} or "
                              f"{SAFETENSORS_FILE}; found {[p.name for p in present] or 'none'}")
    weights_path = present[0]
    if weights_path.name == SAFETENSORS_FILE:
        from safetensors.torch import load_file

        try:
            raw = load_file(str(weights_path))
        except Exception as err:
            raise ConversionError(f"{weights_path}: not a readable safetensors file ({err})") from None
    else:
        raw = load_pickle(weights_path)
    weights = strip_prefix(tensor_dict(raw, str(weights_path)), FAMILY_PREFIX[FAMILY], str(weights_path))
    return OfficialCheckpoint(model_config, weights, ProteinTokenizer().to_dict(),
                              [root / CONFIG_FILE, weights_path], config)


def check_tokenizer(tokenizer: dict) -> None:
    if tokenizer.get("type") != "protein":
        raise ConversionError(f"the model's tokenizer is {tokenizer.get('type')!r}: the protxlstm format "
                              "holds protein models")


def write(out: Path, weights: dict, cfg, tokenizer: dict, context_length: int | None = None) -> list[str]:
    """Write `out/config.json` and `out/pytorch_model.bin`; returns the file names."""
    import json

    import torch

    check_tokenizer(tokenizer)
    config = official_config(cfg, context_length or DEFAULT_CONTEXT_LENGTH)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
    prefix = FAMILY_PREFIX[FAMILY]
    torch.save({prefix + name: tensor for name, tensor in weights.items()}, out / PICKLE_FILE)
    return [CONFIG_FILE, PICKLE_FILE]
