"""Export a training checkpoint to the minimal inference format (DESIGN.md section 6).

A training checkpoint is DeepSpeed's sharded layout (ZeRO stage 0-3, any world size, any
context-parallel size) plus the train state. Downstream teams get one directory instead:

    model.safetensors   consolidated weights (fp32 or bf16), unwrapped module names
    config.json         ModelConfig.to_dict(): architecture only
    tokenizer.json      the tokenizer the shards were built with
    README.md           model card: modality, parameters, tokens trained, curriculum stage,
                        validation loss, source checkpoint and config hash
    training.json       the same provenance as data, with the curriculum's context lengths
                        (`bioxlstm eval` scores protein ICL at each of them)

ZeRO shards are merged with DeepSpeed's own `get_fp32_state_dict_from_zero_checkpoint`, which
reads the fp32 master partitions on CPU: no GPU and no process group of the original size. The
output is written to a temporary sibling directory and renamed into place, so a failed export
leaves nothing behind and an existing export is replaced only with `--force`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from data_pipeline.shards import sha256_file
from data_pipeline.staged_output import staged_directory
from pretrain.errors import PretrainError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
CARD_FILE = "README.md"
LATEST_MARKER = "latest"
DTYPES = ("fp32", "bf16")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class ExportError(PretrainError):
    """The checkpoint cannot be exported as asked; nothing was written."""


@dataclass
class CheckpointSource:
    """Everything export needs from one training checkpoint, whatever wrote it."""

    checkpoint_dir: Path              # the tag directory holding the DeepSpeed files
    model_config: dict                # ModelConfig.to_dict()
    tokenizer: dict                   # Tokenizer.to_dict()
    provenance: dict = field(default_factory=dict)   # for the model card


# ---- reading a run's checkpoint (pretrain.checkpoint layout) -----------------------------------

def read_training_checkpoint(path: str | Path, tokenizer_path: str | Path | None = None) -> CheckpointSource:
    """What to export from a run directory (its `latest` checkpoint) or one checkpoint directory.

    Checks every file against the checkpoint's manifest first (size + sha256), so a damaged
    checkpoint is refused before anything is read. The model config comes from the train state
    (what was actually trained), the tokenizer from the data build the run trained on (its
    manifest), or from `tokenizer_path` when the build is not at hand.
    """
    import torch

    from pretrain.checkpoint import train_state_name, verify_checkpoint
    from pretrain.config import RESOLVED_CONFIG_NAME

    checkpoint_dir = resolve_checkpoint_dir(path)
    manifest = verify_checkpoint(checkpoint_dir)
    state_path = checkpoint_dir / train_state_name(0)
    try:
        train_state = torch.load(state_path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ExportError(f"{state_path}: unreadable ({type(err).__name__}: {err}); the checkpoint is "
                          "corrupt or incomplete: export an earlier checkpoint") from None
    run_dir = checkpoint_dir.parent.parent if checkpoint_dir.parent.name == "checkpoints" else checkpoint_dir.parent
    run_config = _read_run_config(run_dir / RESOLVED_CONFIG_NAME)
    data = run_config.get("data") or {}
    tokenizer = _read_tokenizer(tokenizer_path, data.get("shards"), run_dir)
    if tokenizer.get("type") != data.get("modality", tokenizer.get("type")):
        raise ExportError(f"tokenizer is for {tokenizer.get('type')!r} but the run trained on "
                          f"{data.get('modality')!r} data; pass the run's tokenizer with --tokenizer")
    stages = (run_config.get("curriculum") or {}).get("stages") or []
    provenance = {
        "objective": data.get("objective"),
        "step": train_state.get("step"),
        "tokens_seen": train_state.get("tokens"),
        "curriculum": _curriculum_reached(train_state.get("stage"), stages),
        "validation_loss": train_state.get("last_val_loss"),
        "run_config_hash": train_state.get("config_hash") or manifest.get("config_hash"),
        "world_size": train_state.get("world_size"),
        "context_lens": _context_lens_reached(train_state.get("stage"), stages),
    }
    model_config = train_state.get("model_config") or run_config.get("model")
    if not model_config:
        raise ExportError(f"{state_path}: holds no model config and {run_dir / RESOLVED_CONFIG_NAME} has "
                          "no `model` section; cannot tell which architecture the weights belong to")
    return CheckpointSource(checkpoint_dir, _normalized_model_config(model_config, state_path), tokenizer, provenance)


def _read_run_config(path: Path) -> dict:
    import yaml

    if not path.is_file():
        return {}   # a checkpoint copied without its run directory still exports
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ExportError(f"{path}: not valid YAML ({err}); restore the run's resolved config") from None
    return loaded if isinstance(loaded, dict) else {}


def _read_tokenizer(tokenizer_path, shards, run_dir: Path) -> dict:
    from data_pipeline.tokenizers import load_tokenizer

    if tokenizer_path is not None:
        return load_tokenizer(str(tokenizer_path)).to_dict()
    candidates = [Path(shards), run_dir / shards] if shards else []
    for build_dir in candidates:
        manifest = build_dir / "manifest.json"
        if manifest.is_file():
            from data_pipeline.manifest import read_manifest

            return load_tokenizer(read_manifest(build_dir)["tokenizer"]).to_dict()
    raise ExportError(f"the run's data build {shards!r} (data.shards) was not found, and it holds the "
                      "tokenizer; pass --tokenizer PATH (a tokenizer.json, e.g. from another export)")


def _normalized_model_config(model_config: dict, where: Path) -> dict:
    from modeling import ModelConfig

    try:
        return ModelConfig.from_dict(dict(model_config)).to_dict()
    except Exception as err:
        raise ExportError(f"{where}: the model config is not valid for this version of modeling ({err})") from None


def _curriculum_reached(stage, stages: list) -> str | None:
    if stage is None or not stages:
        return None if stage is None else f"stage {int(stage) + 1}"
    stage = int(stage)
    if stage >= len(stages):
        return f"all {len(stages)} stages done (context {stages[-1].get('context_len')})"
    return f"stage {stage + 1} of {len(stages)} (context {stages[stage].get('context_len')})"


def _context_lens_reached(stage, stages: list) -> list:
    """The curriculum's context lengths up to the checkpoint's stage (evaluation reads them from
    the export's training.json to score the model at each length it was trained for)."""
    if stage is None or not stages:
        return []
    return sorted({int(s["context_len"]) for s in stages[:int(stage) + 1] if s.get("context_len")})


# ---- locating and checking the DeepSpeed files -------------------------------------------------

def resolve_checkpoint_dir(path: str | Path) -> Path:
    """A specific checkpoint directory, given it or a run/checkpoints directory with `latest`."""
    path = Path(path)
    if not path.is_dir():
        raise ExportError(f"{path}: no such checkpoint directory; pass a run directory or one of its "
                          "checkpoints/<tag> directories")
    if _deepspeed_model_files(path):
        return path
    for marker in (path / LATEST_MARKER, path / "checkpoints" / LATEST_MARKER):
        if marker.is_file():
            tag = marker.read_text().strip()
            candidate = marker.parent / tag
            if not tag or not candidate.is_dir():
                raise ExportError(f"{marker} names checkpoint {tag!r}, which does not exist under "
                                  f"{marker.parent}; pass a checkpoint directory explicitly")
            return candidate
    raise ExportError(f"{path}: holds neither DeepSpeed model-state files nor a `latest` marker; "
                      "pass a run directory or one of its checkpoints/<tag> directories")


def _deepspeed_model_files(path: Path) -> list[Path]:
    return sorted(path.glob("*model_states.pt"))


def _deepspeed_optim_files(path: Path) -> list[Path]:
    return sorted(path.glob("*_optim_states.pt"))


def read_zero_stage(checkpoint_dir: Path) -> int:
    """The ZeRO stage, from the model-state file every DeepSpeed checkpoint has."""
    import torch

    files = _deepspeed_model_files(checkpoint_dir)
    if not files:
        raise ExportError(f"{checkpoint_dir}: no *model_states.pt file: not a complete DeepSpeed "
                          "checkpoint; export an earlier checkpoint")
    try:
        states = torch.load(files[0], map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # truncated or corrupt pickle/zip
        raise ExportError(f"{files[0]}: unreadable ({type(err).__name__}: {err}); the checkpoint is "
                          "corrupt or incomplete: export an earlier checkpoint") from None
    config = states.get("ds_config") or {}
    return int((config.get("zero_optimization") or {}).get("stage", 0))


def consolidated_state_dict(checkpoint_dir: Path) -> dict:
    """Full fp32 weights from a DeepSpeed checkpoint of any ZeRO stage and world size."""
    import torch

    stage = read_zero_stage(checkpoint_dir)
    if stage == 0:
        model_file = checkpoint_dir / "mp_rank_00_model_states.pt"
        try:
            module = torch.load(model_file, map_location="cpu", weights_only=False)["module"]
        except Exception as err:
            raise ExportError(f"{model_file}: unreadable ({type(err).__name__}: {err}); the "
                              "checkpoint is corrupt or incomplete: export an earlier checkpoint") from None
        state = {name: tensor.float() if tensor.is_floating_point() else tensor
                 for name, tensor in module.items()}
    else:
        if not _deepspeed_optim_files(checkpoint_dir):
            raise ExportError(f"{checkpoint_dir}: ZeRO stage {stage} checkpoint without "
                              "*_optim_states.pt shards: incomplete; export an earlier checkpoint")
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        try:
            state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir.parent), tag=checkpoint_dir.name)
        except Exception as err:  # missing shards, world-size mismatch, truncated files
            raise ExportError(f"{checkpoint_dir}: cannot consolidate the ZeRO-{stage} shards "
                              f"({type(err).__name__}: {err}); the checkpoint is corrupt or "
                              "incomplete: export an earlier checkpoint") from None
    return {_unwrapped_name(name): tensor.detach().contiguous() for name, tensor in state.items()}


def _unwrapped_name(name: str) -> str:
    """Names of the bare model: wrappers (DDP, torch.compile) add prefixes (nanoGPT #325)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                stripped = True
    return name


def check_weights_fit(state: dict, model_config: dict, where: Path) -> int:
    """Build the model from its config and load the weights strictly; returns the parameter
    count. Catches a config that does not belong to these weights before anything is written."""
    import torch

    from modeling import ModelConfig, build_model

    with torch.device("meta"):
        model = build_model(ModelConfig.from_dict(model_config))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(name for name in set(expected) & set(state)
                         if tuple(expected[name].shape) != tuple(state[name].shape))
    if missing or unexpected or wrong_shape:
        raise ExportError(f"{where}: weights do not match the run's model config (missing "
                          f"{missing[:4]}, unexpected {unexpected[:4]}, wrong shape {wrong_shape[:4]}); "
                          "the checkpoint belongs to another config")
    return sum(p.numel() for p in model.parameters())


# ---- writing the export -------------------------------------------------------------------------

def export_checkpoint(source: CheckpointSource, out_dir: str | Path, dtype: str = "fp32",
                      force: bool = False) -> Path:
    """Write the export of `source` to `out_dir` atomically; returns `out_dir`."""
    import torch
    from safetensors.torch import save_file

    from modeling.inference import TRAINING_FILE

    out_dir = Path(out_dir)
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    refuse_existing(out_dir, force)
    state = consolidated_state_dict(source.checkpoint_dir)
    num_parameters = check_weights_fit(state, source.model_config, source.checkpoint_dir)
    target = torch.bfloat16 if dtype == "bf16" else torch.float32
    tensors = {name: (t.to(target) if t.is_floating_point() else t).contiguous() for name, t in state.items()}

    with staged_directory(out_dir) as staging:
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": "pt", "dtype": dtype})
        write_json(staging / CONFIG_FILE, source.model_config)
        write_json(staging / TOKENIZER_FILE, source.tokenizer)
        write_json(staging / TRAINING_FILE, source.provenance)
        card = model_card(source, num_parameters, dtype, sha256_file(staging / WEIGHTS_FILE))
        (staging / CARD_FILE).write_text(card)
    return out_dir


def refuse_existing(out_dir: Path, force: bool) -> None:
    """An existing non-empty output is replaced only with --force (nothing is lost otherwise)."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not force:
        raise ExportError(f"{out_dir} exists and is not empty; choose a new directory or pass --force "
                          "to replace it")


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")


def config_hash(model_config: dict) -> str:
    """Stable short hash of a config dict (sorted JSON)."""
    return hashlib.sha256(json.dumps(model_config, sort_keys=True).encode()).hexdigest()[:16]


def model_card(source: CheckpointSource, num_parameters: int, dtype: str, weights_sha256: str) -> str:
    """A short README.md: what the model is and where it came from."""
    facts = source.provenance
    modality = source.tokenizer.get("type", "unknown")

    def fact(key: str, default: str = "unknown") -> str:
        value = facts.get(key)
        return default if value is None else str(value)

    lines = [
        f"# Bio-xLSTM {modality} model",
        "",
        "Exported by `bioxlstm export` from a training checkpoint. Load it with",
        "`from modeling.inference import load; model = load(\"<this directory>\")`",
        "(needs torch, safetensors and this project's `modeling`; no DeepSpeed).",
        "",
        "| field | value |",
        "|---|---|",
        f"| modality | {modality} |",
        f"| parameters | {num_parameters:,} |",
        f"| d_model x blocks | {source.model_config.get('d_model', '?')} x {source.model_config.get('num_blocks', '?')} |",
        f"| objective | {fact('objective')} |",
        f"| tokens trained | {format_count(facts.get('tokens_seen'))} |",
        f"| optimizer steps | {fact('step')} |",
        f"| curriculum reached | {fact('curriculum')} |",
        f"| validation loss | {fact('validation_loss', 'not measured')} |",
        f"| weights dtype | {dtype} |",
        f"| source checkpoint | `{source.checkpoint_dir}` |",
        f"| run config hash | {fact('run_config_hash')} |",
        f"| model config hash | {config_hash(source.model_config)} |",
        f"| model.safetensors sha256 | {weights_sha256[:16]}... |",
        "",
    ]
    return "\n".join(lines)


def format_count(value) -> str:
    if value is None:
        return "unknown"
    value = int(value)
    for unit, scale in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit} ({value:,})"
    return f"{value:,}"
