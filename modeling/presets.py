"""Load a model config from configs/models/<name>.yaml (or any YAML path)."""
from __future__ import annotations

from pathlib import Path

from modeling.config import ModelConfig
from modeling.errors import ModelConfigError

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "models"


def load_model_config(name_or_path: str) -> ModelConfig:
    """`name_or_path`: a preset name (e.g. "prot_xlstm_26m") or a YAML file path."""
    import yaml

    path = Path(name_or_path)
    if not path.suffix:
        path = MODEL_CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.yaml"))
        raise ModelConfigError(f"model config {str(path)!r} not found; presets: {known}")
    data = yaml.safe_load(path.read_text())
    try:
        return ModelConfig.from_dict(data)
    except ModelConfigError as err:
        raise ModelConfigError(f"{path}: {err}") from None
