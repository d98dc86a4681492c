"""RunConfig: the typed, validated description of one training run.

A run config is YAML with six sections (eval optional); defaults live in the dataclasses below, the YAML
holds only what differs:

    model:       modeling.ModelConfig fields, or `base: models/x.yaml` plus field overrides
    data:        data_pipeline.DataConfig fields
    train:       TrainConfig (optimizer, schedule, ZeRO stage, checkpoints, logging)
    parallel:    ParallelConfig (context_parallel_size)
    curriculum:  stages: [{context_len, micro_batch_size, tokens, grad_accum?}, ...]
    eval:        EvalConfig (the paper's evaluations during training; optional)

`model.base` is a path relative to the config file's folder or one of its parents (so both
configs/x.yaml and configs/runs/x.yaml may say `base: models/protein_tiny.yaml`); the base is
inlined on load, so the resolved config saved in the run directory stands alone.

Overrides `a.b=c` (command line) are applied to the raw mapping before validation; values are
parsed as YAML scalars or lists (`train.lr=3e-4`, `train.betas=[0.9,0.95]`,
`curriculum.stages.1.tokens=1000000`). Validation is strict: an unknown key or a wrong type is
an error naming the full dotted key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from pretrain.errors import ConfigError

RESOLVED_CONFIG_NAME = "config.yaml"
SCHEDULES = ("cosine", "wsd", "constant")
DTYPES = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"        # run directory: checkpoints/, tensorboard/, config.yaml
    seed: int = 0
    lr: float = 6e-4                     # peak learning rate
    min_lr: float = 0.0                  # floor of the decay (cosine / wsd)
    warmup_tokens: int = 0               # linear warmup from warmup_start_lr, counted in tokens
    warmup_start_lr: float = 0.0
    schedule: str = "cosine"             # "cosine" | "wsd" (warmup-stable-decay) | "constant"
    decay_fraction: float = 0.1          # wsd: share of the total tokens spent decaying
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.1            # on matrices only; norms, biases and gates' biases excluded
    grad_clip: float = 1.0               # global norm; 0 disables
    grad_accum: int = 1                  # micro-batches per optimizer step (stages may override)
    zero_stage: int = 1                  # DeepSpeed ZeRO stage 0..3
    dtype: str = "auto"                  # "auto" = bf16 on GPU, fp32 on CPU
    activation_checkpointing: bool = False   # recompute each block in the backward pass
    max_steps: Optional[int] = None      # stop early (before the curriculum ends), e.g. for smoke runs
    checkpoint_every: int = 1000         # optimizer steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 3            # newest K checkpoints kept
    eval_every: int = 500                # optimizer steps between validation passes (0 = only at the end)
    eval_batches: int = 20               # validation micro-batches per pass (0 = the whole split)
    log_every: int = 10                  # optimizer steps between TensorBoard / console updates
    tensorboard: bool = True
    peak_tflops: Optional[float] = None  # per device, for MFU; None = 989 (H100 bf16) on GPU, no MFU on CPU
    record_samples: bool = False         # write the sample keys every rank trains on (data audit)
    progress: bool = True                # progress on rank 0: a live bar on a terminal, else plain lines
    progress_interval_s: Optional[float] = None   # plain-line interval; None = $BIOXLSTM_PROGRESS_INTERVAL_S or 60
    # A collective that waits longer than this for a peer fails the rank, so a dead or hung peer
    # never hangs the others forever. Above the longest legitimate wait (rank 0 hashing a big
    # checkpoint for its manifest while the others wait at the barrier); 600 s is NCCL's default.
    collective_timeout_s: float = 600.0
    max_bad_steps: int = 5               # consecutive skipped steps (non-finite loss/grad) before the run stops


@dataclass
class ParallelConfig:
    context_parallel_size: int = 1       # ranks that share one sequence (must divide the world size)


@dataclass
class StageConfig:
    context_len: int = 2048
    micro_batch_size: int = 1
    tokens: int = 0                      # token budget of this stage
    grad_accum: Optional[int] = None     # None = train.grad_accum


@dataclass
class CurriculumConfig:
    stages: List[StageConfig] = field(default_factory=list)


@dataclass
class EvalConfig:
    """The paper's evaluations inside training (evaluation/; `bioxlstm eval --help` lists suites).

    Runs every `every` optimizer steps and at the end, on the full weights every rank gathers
    (any ZeRO stage, any context-parallel size), the suites' work shared by all ranks. A due
    evaluation is skipped while evaluation has taken more than `max_time_share` of the run's
    wall time so far, so its cost stays bounded whatever the interval."""

    suites: List[str] = field(default_factory=list)   # empty = no in-training evaluation
    every: int = 0                       # optimizer steps between evaluations (0 = only at the end)
    at_end: bool = True                  # also after the last step
    data: Optional[str] = None           # default: data.shards (its validation split)
    quick: bool = True                   # the suites' quick sizes
    seed: int = 42
    context_len: Optional[int] = None    # default: the current stage's context length
    novelty_reference: Optional[str] = None   # chem: SMILES file (default: data.shards' train split)
    options: Dict[str, Any] = field(default_factory=dict)   # suite sizes, e.g. {num_samples: 256}
    batch_size: int = 64
    max_time_share: float = 0.25         # skip a due evaluation while evaluation used more of the wall time


@dataclass
class RunConfig:
    model: Any = None                    # modeling.ModelConfig
    data: Any = None                     # data_pipeline.config.DataConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return {
            "model": self.model.to_dict(),
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
            "parallel": dataclasses.asdict(self.parallel),
            "curriculum": dataclasses.asdict(self.curriculum),
            "eval": dataclasses.asdict(self.eval),
        }

    def config_hash(self) -> str:
        """Short stable hash of the resolved config (recorded in checkpoints)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def save(self, run_dir: str | Path) -> Path:
        """Write the resolved config into the run directory (temp file + rename)."""
        import os

        import yaml

        path = Path(run_dir) / RESOLVED_CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        os.replace(tmp, path)
        return path


# ---------------------------------------------------------------------------------- loading
def load_run_config(path: str | Path, overrides: Optional[List[str]] = None) -> RunConfig:
    """Read a run config YAML, inline `model.base`, apply `a.b=c` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    raw = _read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with model/data/train/parallel/curriculum")
    try:
        raw = _inline_model_base(raw, path.parent)
        for override in overrides or []:
            apply_override(raw, override)
        raw = _inline_model_base(raw, path.parent)  # an override may name another base
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return run_config_from_dict(raw, source=str(path))


def _read_yaml(path: Path) -> Any:
    """Parsed YAML; every way that fails is one single-line ConfigError naming file and line."""
    import yaml

    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_unique_key_loader())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or " ".join(str(error).split())
        raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        # ValueError: a date PyYAML cannot build (2001-02-30); RecursionError: absurd nesting
        raise ConfigError(f"{path}: not a readable YAML config ({type(error).__name__}: "
                          f"{' '.join(str(error).split())[:200]})") from None


def _unique_key_loader():
    """PyYAML's SafeLoader, except that a key given twice in one mapping is an error: PyYAML
    keeps the last one silently, so `lr:` written twice would train with whichever came last."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, typing.Hashable):
                    continue                     # PyYAML itself refuses these below
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {str(key)!r} appears twice in one mapping; keep one",
                        key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def run_config_from_dict(raw: dict, source: str = "config") -> RunConfig:
    """Validate a plain mapping (e.g. a saved resolved config) into a RunConfig; every
    ConfigError names `source`."""
    try:
        return _run_config_from_dict(raw, source)
    except ConfigError as error:
        if str(error).startswith(source):
            raise
        raise ConfigError(f"{source}: {error}") from None


def _run_config_from_dict(raw: dict, source: str) -> RunConfig:
    from data_pipeline.config import DataConfig
    from modeling import ModelConfig

    known = {f.name for f in dataclasses.fields(RunConfig)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{source}: unknown key {key!r}; known top-level keys: {sorted(known)}")
    for key in ("model", "data"):
        if not isinstance(raw.get(key), dict):
            raise ConfigError(f"{source}: section {key!r} is missing or not a mapping")
    model_values = _typed(ModelConfig, raw["model"], "model")
    data_values = _typed(DataConfig, raw["data"], "data")
    try:
        model = ModelConfig.from_dict(model_values)
    except Exception as error:
        if getattr(error, "user_facing", False) or isinstance(error, (ValueError, TypeError)):
            raise ConfigError(f"{source}: model: {error}") from None
        raise
    try:
        data = DataConfig.from_dict(data_values).validate()
    except Exception as error:
        if getattr(error, "user_facing", False) or isinstance(error, (ValueError, TypeError)):
            raise ConfigError(f"{source}: {error}") from None
        raise
    cfg = RunConfig(
        model=model,
        data=data,
        train=TrainConfig(**_typed(TrainConfig, raw.get("train") or {}, "train")),
        parallel=ParallelConfig(**_typed(ParallelConfig, raw.get("parallel") or {}, "parallel")),
        curriculum=CurriculumConfig(**_typed(CurriculumConfig, raw.get("curriculum") or {}, "curriculum")),
        eval=EvalConfig(**_typed(EvalConfig, raw.get("eval") or {}, "eval")),
    )
    validate_run_config(cfg, source)
    return cfg


def validate_run_config(cfg: RunConfig, source: str = "config") -> None:
    """Checks that need more than one field (the curriculum's constant tokens per step: curriculum.py)."""
    from pretrain.curriculum import validate_stages

    t = cfg.train

    def bad(key: str, hint: str):
        raise ConfigError(f"{source}: {key}={_lookup(cfg, key)!r}: {hint}")

    if t.schedule not in SCHEDULES:
        bad("train.schedule", f"choose one of {', '.join(SCHEDULES)}")
    if t.dtype not in DTYPES:
        bad("train.dtype", f"choose one of {', '.join(DTYPES)}")
    if t.zero_stage not in (0, 1, 2, 3):
        bad("train.zero_stage", "choose 0, 1, 2 or 3")
    if t.lr <= 0:
        bad("train.lr", "must be > 0")
    if not 0 <= t.min_lr <= t.lr:
        bad("train.min_lr", "must be in [0, train.lr]")
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        bad("train.betas", "give two numbers in [0, 1), e.g. [0.9, 0.95]")
    if not 0 < t.decay_fraction <= 1:
        bad("train.decay_fraction", "must be in (0, 1]")
    for key in ("warmup_tokens", "checkpoint_every", "eval_every", "eval_batches", "weight_decay", "grad_clip"):
        if getattr(t, key) < 0:
            bad(f"train.{key}", "must be >= 0")
    if not 0 < t.collective_timeout_s < float("inf"):
        bad("train.collective_timeout_s", "must be a finite number of seconds > 0 (e.g. 600)")
    for key in ("grad_accum", "keep_checkpoints", "log_every", "max_bad_steps"):
        if getattr(t, key) < 1:
            bad(f"train.{key}", "must be >= 1")
    if t.progress_interval_s is not None and not 0 < t.progress_interval_s < float("inf"):
        bad("train.progress_interval_s", "must be a number of seconds > 0 or null (e.g. 60)")
    if t.max_steps is not None and t.max_steps < 1:
        bad("train.max_steps", "must be >= 1 or null")
    if not t.out_dir:
        bad("train.out_dir", "set the run directory")
    if cfg.parallel.context_parallel_size < 1:
        bad("parallel.context_parallel_size", "must be >= 1")
    validate_stages(cfg.curriculum.stages, t.grad_accum, cfg.parallel.context_parallel_size, source)
    validate_eval_config(cfg, source)


def validate_eval_config(cfg: RunConfig, source: str) -> None:
    """Suite names and their modality, checked at load so a typo fails before training starts."""
    from evaluation import SUITES, QUICK_SUITES

    e = cfg.eval
    for index, name in enumerate(e.suites):
        if name not in SUITES:
            raise ConfigError(f"{source}: eval.suites.{index}={name!r}: unknown suite; known suites: "
                              f"{', '.join(SUITES)}")
        if name not in QUICK_SUITES.get(cfg.data.modality, ()):
            raise ConfigError(f"{source}: eval.suites.{index}={name!r} evaluates another modality than "
                              f"data.modality={cfg.data.modality!r}; choose from "
                              f"{', '.join(QUICK_SUITES.get(cfg.data.modality, ()))}")
    if e.every < 0:
        raise ConfigError(f"{source}: eval.every={e.every}: must be >= 0 (0 = only at the end)")
    if not 0 < e.max_time_share <= 1:
        raise ConfigError(f"{source}: eval.max_time_share={e.max_time_share}: must be in (0, 1]")
    if e.batch_size < 1:
        raise ConfigError(f"{source}: eval.batch_size={e.batch_size}: must be >= 1")


def _lookup(cfg: Any, dotted: str) -> Any:
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


# -------------------------------------------------------------------------- model base file
def _inline_model_base(raw: dict, config_dir: Path) -> dict:
    model = raw.get("model")
    if not isinstance(model, dict) or "base" not in model:
        return raw
    base_name = model["base"]
    if not isinstance(base_name, str):
        raise ConfigError(f"model.base: expected a path string, got {base_name!r}")
    candidates = [config_dir / base_name, *(parent / base_name for parent in config_dir.resolve().parents)]
    base_path = next((c for c in candidates if _is_file(c)), None)
    if base_path is None:
        raise ConfigError(f"model.base={base_name!r}: not found next to {config_dir} or in a parent folder; "
                          "give a path relative to the config file (e.g. models/protein_tiny.yaml)")
    base = _read_yaml(base_path) or {}
    if not isinstance(base, dict):
        raise ConfigError(f"{base_path}: expected a mapping of model config fields")
    base = base.get("model", base) if isinstance(base.get("model"), dict) else base
    merged = {**base, **{k: v for k, v in model.items() if k != "base"}}
    return {**raw, "model": merged}


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name too long for the file system: not a base file either
        return False


# ------------------------------------------------------------------------------- overrides
def apply_override(raw: dict, override: str) -> None:
    """Apply one `a.b.c=value` to a nested mapping; list items are addressed by index."""
    import yaml

    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected key.sub=value (e.g. train.lr=3e-4)")
    dotted, text = override.split("=", 1)
    parts = dotted.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {override!r}: empty key part in {dotted!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except (yaml.YAMLError, ValueError, RecursionError):  # ValueError: an impossible date
        value = text
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[:depth + 1])
        if isinstance(node, list):
            node = node[_list_index(part, node, where)]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"override {override!r}: {_printable(where)} is a value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(last, node, dotted)] = value
    else:
        node[last] = value


def _list_index(part: str, node: list, where: str) -> int:
    if not re.fullmatch(r"[0-9]+", part) or int(part) >= len(node):
        raise ConfigError(f"override key {_printable(where)}: {part!r} is not an index of a list of "
                          f"{len(node)} items")
    return int(part)


def _printable(key: Any) -> str:
    """A key from user input as it goes into a one-line message (repr if it holds a newline...)."""
    text = str(key)
    return text if text.isprintable() else repr(text)


# ----------------------------------------------------------------------- typed validation
_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _typed(cls: type, values: Any, prefix: str) -> dict:
    """Check `values` against dataclass `cls`'s annotations; returns kwargs for cls(**kwargs).

    Unknown keys and wrong types raise ConfigError naming the full dotted key. Ints are
    accepted for floats; numeric strings like '3e-4' are accepted for floats because YAML 1.1
    (PyYAML) reads exponent notation without a dot as a string.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix}: expected a mapping, got {_show(values)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{prefix}.{_printable(key)}: unknown key; known keys of {prefix}: "
                              f"{', '.join(names)}")
        out[key] = _check(hints[key], value, f"{prefix}.{key}")
    return out


def _check(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(inner[0], value, key) if len(inner) == 1 else value
    if hint is Any:
        return value
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {_show(value)}")
        return dict(value)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_show(value)}")
        return [_check(args[0] if args else Any, item, f"{key}.{i}") for i, item in enumerate(value)]
    if origin in (tuple, typing.Tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_show(value)}")
        item_hint = args[0] if args else Any
        return tuple(_check(item_hint, item, f"{key}.{i}") for i, item in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return hint(**_typed(hint, value, key))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected bool (true/false), got {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            # token budgets written in exponent form: 7.9e9 (float) or 1e9 (a string in YAML 1.1)
            if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
                value = float(value)
            if isinstance(value, float) and value.is_integer() and abs(value) >= 1e3:
                return int(value)
            raise ConfigError(f"{key}: expected int, got {_show(value)}")
        return value
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected float, got {_show(value)}")
        if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
            value = float(value)
        if isinstance(value, (int, float)):
            number = float(value) if not isinstance(value, int) or abs(value) < 2**1000 else math.inf
            if not math.isfinite(number):  # nan passes every range check; inf never ends a loop
                raise ConfigError(f"{key}: expected a finite number, got {_show(value)}")
            return number
        raise ConfigError(f"{key}: expected float, got {_show(value)}")
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected str, got {_show(value)}")
        return value
    return value


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
