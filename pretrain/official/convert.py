"""Official checkpoints <-> this project's export directory.

`convert_official(family, src, out)`: a checkpoint released with a Bio-xLSTM paper -> an
export directory (`model.safetensors`, `config.json`, `tokenizer.json`, a model card naming the
source) that `modeling.inference.load` reads. `export_official(source, out, family)`: an export
directory or a training run -> the official layout, loadable by the paper's own code.

Both directions use the one key table (pretrain/official/keys.py) and the family's config
reader (pretrain/official/<family>.py). Exporting first checks that the official config it
writes reads back as the same model (`ModelConfig.architecture_dict`), so a model the official
code cannot express is refused by field instead of written approximately. Outputs are staged
in a sibling directory and moved into place only when complete. No DeepSpeed or Megatron is
needed unless the source is a ZeRO-sharded training checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pretrain.errors import ConversionError
from pretrain.official import chemxlstm, dnaxlstm, protxlstm
from pretrain.official.keys import weights_from_official, weights_to_official

FAMILIES = {"protxlstm": protxlstm, "dnaxlstm": dnaxlstm, "chemxlstm": chemxlstm}
SOURCES = {"protxlstm": "ml-jku/Prot-xLSTM", "dnaxlstm": "ml-jku/DNA-xLSTM", "chemxlstm": "ml-jku/Chem-xLSTM"}
DTYPE_NAMES = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float64": "fp64"}


def family_module(family: str):
    if family not in FAMILIES:
        raise ConversionError(f"format {family!r}: choose one of {', '.join(FAMILIES)}")
    return FAMILIES[family]


def _model_config(data: dict, where):
    from modeling import ModelConfig, ModelConfigError

    try:
        return ModelConfig.from_dict(dict(data))
    except ModelConfigError as err:
        raise ConversionError(f"{where}: {err}") from None


# ---- official -> this project --------------------------------------------------------------------

def convert_official(family: str, src, out, force: bool = False, num_heads: int | None = None,
                     model_config_path: str | None = None) -> Path:
    """Convert the official checkpoint at `src` into an export directory `out`; returns `out`."""
    from safetensors.torch import save_file

    from pretrain.export import CARD_FILE, CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, refuse_existing, \
        staged_directory, write_json

    module = family_module(family)
    src, out = Path(src), Path(out)
    refuse_existing(out, force)
    checkpoint = module.read(src, num_heads=num_heads, model_config_path=model_config_path)
    cfg = _model_config(checkpoint.model_config, src)
    state = weights_from_official(checkpoint.weights, cfg, src)
    floating = [t for t in state.values() if t.is_floating_point()]
    dtype = DTYPE_NAMES.get(str(floating[0].dtype), str(floating[0].dtype)) if floating else "fp32"
    num_parameters = sum(t.numel() for t in state.values())
    with staged_directory(out) as staging:
        save_file({k: v.contiguous() for k, v in state.items()}, str(staging / WEIGHTS_FILE),
                  metadata={"format": "pt", "dtype": dtype, "converted_from": family})
        write_json(staging / CONFIG_FILE, cfg.to_dict())
        write_json(staging / TOKENIZER_FILE, checkpoint.tokenizer)
        (staging / CARD_FILE).write_text(_card(family, checkpoint, cfg, num_parameters, dtype))
    return out


def _card(family: str, checkpoint, cfg, num_parameters: int, dtype: str) -> str:
    from data_pipeline.shards import sha256_file
    from pretrain.export import config_hash

    sources = "<br>".join(f"`{path}` (sha256 {sha256_file(path)[:16]}...)" for path in checkpoint.sources)
    return "\n".join([
        f"# Bio-xLSTM {checkpoint.tokenizer.get('type', 'unknown')} model, converted from {SOURCES[family]}",
        "",
        f"Converted by `bioxlstm convert {family}` from an official checkpoint of the paper's code. Load it",
        "with `from modeling.inference import load; model = load(\"<this directory>\")`; write it back",
        f"with `bioxlstm export <this directory> OUT --format {family}`.",
        "",
        "| field | value |",
        "|---|---|",
        f"| source format | {family} ({SOURCES[family]}) |",
        f"| source files | {sources} |",
        f"| parameters | {num_parameters:,} |",
        f"| d_model x blocks | {cfg.d_model} x {cfg.num_blocks} |",
        f"| weights dtype | {dtype} (as stored in the source) |",
        f"| model config hash | {config_hash(cfg.to_dict())} |",
        "",
    ])


# ---- this project -> official --------------------------------------------------------------------

@dataclass
class ModelSource:
    """A model of this project to write out: its config and tokenizer now, its weights on demand
    (consolidating ZeRO shards is the expensive part, done only once the config is accepted)."""

    model_config: dict
    tokenizer: dict
    description: str
    load_weights: Callable[[], dict]


def read_model_source(path, tokenizer_path=None) -> ModelSource:
    """An export directory, or a training run / checkpoint directory (any ZeRO stage)."""
    from pretrain.export import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE

    path = Path(path)
    if (path / WEIGHTS_FILE).is_file() and (path / CONFIG_FILE).is_file():
        from data_pipeline.tokenizers import load_tokenizer
        from pretrain.official.files import read_json

        def load_export():
            from safetensors.torch import load_file

            try:
                return load_file(str(path / WEIGHTS_FILE))
            except Exception as err:
                raise ConversionError(f"{path / WEIGHTS_FILE}: cannot read ({err}); re-export the model") from None

        tokenizer = load_tokenizer(str(tokenizer_path or path / TOKENIZER_FILE)).to_dict()
        return ModelSource(read_json(path / CONFIG_FILE), tokenizer, f"export {path}", load_export)
    from pretrain.export import check_weights_fit, consolidated_state_dict, read_training_checkpoint

    source = read_training_checkpoint(path, tokenizer_path=tokenizer_path)

    def load_run():
        state = consolidated_state_dict(source.checkpoint_dir)
        check_weights_fit(state, source.model_config, source.checkpoint_dir)
        return state

    return ModelSource(source.model_config, source.tokenizer, f"training checkpoint {source.checkpoint_dir}", load_run)


def check_representable(cfg, family: str) -> None:
    """Refuse, by field, a model whose official config would read back as another model."""
    module = family_module(family)
    back = _model_config(module.read_back(cfg), f"{family} config")
    ours, theirs = cfg.architecture_dict(), back.architecture_dict()
    for name in module.REPRESENTATION_ONLY:
        ours.pop(name, None)
        theirs.pop(name, None)
    differ = [k for k in sorted(set(ours) | set(theirs)) if ours.get(k, "<n/a>") != theirs.get(k, "<n/a>")]
    if differ:
        shown = ", ".join(f"model.{k}={ours.get(k, '<n/a>')!r} (the {family} format has "
                          f"{theirs.get(k, '<n/a>')!r})" for k in differ[:4])
        raise ConversionError(f"this model cannot be written in the {family} format exactly: {shown}")


def export_official(source, out, family: str, force: bool = False, tokenizer_path=None,
                    context_length: int | None = None) -> Path:
    """Write the model at `source` (export dir or training run) in the official `family` layout."""
    from pretrain.export import CARD_FILE, refuse_existing, staged_directory

    module = family_module(family)
    out = Path(out)
    refuse_existing(out, force)
    model = read_model_source(source, tokenizer_path)
    cfg = _model_config(model.model_config, source)
    check_representable(cfg, family)
    module.check_tokenizer(model.tokenizer)
    official = weights_to_official(model.load_weights(), cfg)
    with staged_directory(out) as staging:
        files = module.write(staging, official, cfg, model.tokenizer, context_length)
        (staging / CARD_FILE).write_text(
            f"# {SOURCES[family]} checkpoint written by `bioxlstm export --format {family}`\n\n"
            f"Source: {model.description}. Files: {', '.join(f'`{f}`' for f in files)}.\n")
    return out
