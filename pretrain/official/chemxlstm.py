"""Chem-xLSTM (ml-jku/Chem-xLSTM) checkpoints, both ways.

Layout (DESIGN.md section 11): a directory with `model.pt` (the state dict of the official
`xLSTMModel`, tensor names prefixed `model.`) and `init_arguments.json` (the constructor's
arguments plus the vocabulary). Its model is the NX-AI xLSTM mLSTM stack with the official
defaults (conv 4, qkv blocksize 4, proj_factor 2 rounded up to a multiple of 64, no biases, no
position encoding, untied head).

init_arguments.json, key by key:
  model_dim -> d_model, n_layers -> num_blocks, vocab_size (the embedding rows, >= the
  vocabulary), token2label / label2token -> the tokenizer (ids as stored: [PAD] = 0, then the
  tokens in order of appearance in the training data; SMILES segmented the official way,
  `segmentation: chem_xlstm`), mode (must be "smiles"), model_class (must be the xLSTMModel;
  absent is accepted). n_heads is stored as 1 whatever the model had (the official save()
  says so), so the head count comes from `--num-heads`, checked against the gate weights.
  Ignored (no effect on the model): state_dim, dropout, sequence_length, n_max_epochs,
  learning_rate, batch_size, n_augmentations, device, gpt_upj_factor, kwargs,
  warned_about_token.
Written back: the same keys, n_heads the true head count (so the official `from_file`, which
builds the model from it, gets the right gate shapes), sequence_length 2048 (the paper's
context) unless given.
"""
from __future__ import annotations

from pathlib import Path

from pretrain.errors import ConversionError
from pretrain.official.files import OfficialCheckpoint, OfficialConfig, load_pickle, read_json, strip_prefix, tensor_dict
from pretrain.official.keys import FAMILY_PREFIX

FAMILY = "chemxlstm"
WEIGHTS_FILE, ARGUMENTS_FILE = "model.pt", "init_arguments.json"
MODEL_CLASS = "<class 'chemxlstm.model.xLSTMModel'>"
IGNORED = ("state_dim", "dropout", "sequence_length", "n_max_epochs", "learning_rate", "batch_size",
           "n_augmentations", "device", "gpt_upj_factor", "kwargs", "warned_about_token")
REPRESENTATION_ONLY = ("norm_weight_offset", "tie_embeddings")
FIXED = dict(conv_kernel_size=4, qk_block_size=4, proj_factor=2.0, proj_multiple_of=64, proj_rounding="up",
             mlstm_bias=False, position_encoding="none", norm_weight_offset=True, tie_embeddings=False, head="lm")
DEFAULT_SEQUENCE_LENGTH = 2048


def vocabulary_from_official(token2label, label2token, where: str) -> list[str]:
    if not isinstance(token2label, dict) or not token2label:
        raise ConversionError(f"{where}: token2label is missing or empty")
    labels = sorted(token2label.values()) if all(isinstance(v, int) for v in token2label.values()) else None
    if labels != list(range(len(token2label))):
        raise ConversionError(f"{where}: token2label labels must be the integers 0..{len(token2label) - 1}")
    vocab = [None] * len(token2label)
    for token, label in token2label.items():
        vocab[label] = token
    if label2token is not None:
        if not isinstance(label2token, dict) or {int(k): v for k, v in label2token.items()} != dict(enumerate(vocab)):
            raise ConversionError(f"{where}: label2token is not the inverse of token2label")
    return vocab


def read_arguments(data: dict, where: str, num_heads: int | None) -> tuple[dict, list[str]]:
    c = OfficialConfig(data, where)
    c.ignore(*IGNORED)
    c.only("mode", "smiles", ("smiles",), str)
    model_class = c.get("model_class", None, str)
    if model_class is not None and model_class != MODEL_CLASS:
        c.refuse("model_class", model_class, f"is not the Chem-xLSTM xLSTM model ({MODEL_CLASS})")
    c.get("n_heads", None)              # stored as 1 whatever the model had: see --num-heads
    if num_heads is None:
        raise ConversionError(f"{where}: Chem-xLSTM stores n_heads as 1 whatever the model had; pass "
                              "--num-heads (1 for Chem-xLSTM 1.6M, 8 for 15M)")
    vocab = vocabulary_from_official(c.need("token2label", dict), c.get("label2token", None), where)
    model = dict(FIXED, d_model=c.need("model_dim", int), num_blocks=c.need("n_layers", int),
                 vocab_size=c.need("vocab_size", int), num_heads=num_heads)
    if model["vocab_size"] < len(vocab):
        c.refuse("vocab_size", model["vocab_size"], f"is smaller than its vocabulary ({len(vocab)} tokens)")
    c.finish()
    return model, vocab


def arguments(cfg, tokenizer: dict, sequence_length: int | None = None) -> dict:
    vocab = tokenizer["vocab"]
    return {
        "mode": "smiles", "model_dim": cfg.d_model, "state_dim": 64, "n_layers": cfg.num_blocks,
        "n_heads": cfg.num_heads, "dropout": 0.0, "vocab_size": cfg.vocab_size,
        "sequence_length": sequence_length or DEFAULT_SEQUENCE_LENGTH, "n_max_epochs": 1, "learning_rate": 1e-3,
        "batch_size": 1, "device": "cuda", "n_augmentations": 0, "gpt_upj_factor": 4.0, "kwargs": {},
        "warned_about_token": [], "token2label": {t: i for i, t in enumerate(vocab)},
        "label2token": {str(i): t for i, t in enumerate(vocab)}, "model_class": MODEL_CLASS,
    }


def read_back(cfg) -> dict:
    """The model config the reader derives from what `write` writes for `cfg`."""
    vocab = {"vocab": ["[PAD]", "[BEG]", "[END]"]}
    return read_arguments(arguments(cfg, vocab), "init_arguments.json", cfg.num_heads)[0]


def read(src: Path, num_heads: int | None = None, **_) -> OfficialCheckpoint:
    from data_pipeline.tokenizers import SmilesTokenizer

    root = src if src.is_dir() else src.parent
    data = read_json(root / ARGUMENTS_FILE)
    model_config, vocab = read_arguments(data, str(root / ARGUMENTS_FILE), num_heads)
    try:
        tokenizer = SmilesTokenizer.from_vocab(vocab, segmentation="chem_xlstm", source=str(root / ARGUMENTS_FILE))
    except Exception as err:
        raise ConversionError(str(err)) from None
    raw = tensor_dict(load_pickle(root / WEIGHTS_FILE), str(root / WEIGHTS_FILE))
    weights = strip_prefix(raw, FAMILY_PREFIX[FAMILY], str(root / WEIGHTS_FILE))
    gate = weights.get("xlstm_block_stack.blocks.0.xlstm.mlstm_cell.igate.weight")
    if gate is not None and gate.shape[0] != num_heads:
        raise ConversionError(f"{root / WEIGHTS_FILE}: the gates have {gate.shape[0]} heads, not --num-heads "
                              f"{num_heads}; pass --num-heads {gate.shape[0]}")
    return OfficialCheckpoint(model_config, weights, tokenizer.to_dict(),
                              [root / ARGUMENTS_FILE, root / WEIGHTS_FILE], data)


def check_tokenizer(tokenizer: dict) -> None:
    """The official code segments SMILES its own way; a vocabulary built with bracket atoms as
    single tokens would meet token sequences there it never saw in training."""
    if tokenizer.get("type") != "molecules":
        raise ConversionError(f"the model's tokenizer is {tokenizer.get('type')!r}: the chemxlstm format "
                              "holds molecule models")
    if tokenizer.get("segmentation", "atoms") == "chem_xlstm":
        return
    from data_pipeline.tokenizers import SMILES_SPECIALS

    bracket_atoms = [t for t in tokenizer["vocab"] if len(t) > 1 and t.startswith("[") and t not in SMILES_SPECIALS]
    if bracket_atoms:
        raise ConversionError(
            f"the tokenizer holds bracket atoms as single tokens ({bracket_atoms[:3]}), which the official "
            "Chem-xLSTM code splits into '[', symbols and ']': its evaluation would feed this model "
            "token sequences it never saw; train on a tokenizer with segmentation chem_xlstm")


def write(out: Path, weights: dict, cfg, tokenizer: dict, context_length: int | None = None) -> list[str]:
    """`out/model.pt` and `out/init_arguments.json`."""
    import json

    import torch

    check_tokenizer(tokenizer)
    prefix = FAMILY_PREFIX[FAMILY]
    torch.save({prefix + name: tensor for name, tensor in weights.items()}, out / WEIGHTS_FILE)
    (out / ARGUMENTS_FILE).write_text(json.dumps(arguments(cfg, tokenizer, context_length), indent=4) + "\n")
    return [WEIGHTS_FILE, ARGUMENTS_FILE]
