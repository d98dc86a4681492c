"""Reading official files safely and official config dicts strictly.

Official checkpoints are pickles: released weights files are loaded with
`torch.load(weights_only=True)` only, which unpickles tensors and plain containers and nothing
else; a file that needs more is refused with one line saying how to re-save it. Training
checkpoints (Lightning `.ckpt`, whose hyper_parameters are an omegaconf DictConfig) go through
the allow-listing unpickler of `safe_unpickle.py`, which reads omegaconf configs as plain data
and refuses every other global by name. Official config
dicts are read key by key (`OfficialConfig`): every key is used, knowingly ignored, or refused
by name, so an option this project does not implement exactly is never approximated.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pretrain.errors import ConversionError


@dataclass
class OfficialCheckpoint:
    """What a family reader found: everything the export directory needs."""

    model_config: dict            # ModelConfig fields
    weights: dict                 # official tensor names, family prefix stripped
    tokenizer: dict               # Tokenizer.to_dict()
    sources: list                 # the files read, for the model card
    official_config: dict = field(default_factory=dict)


def load_pickle(path: Path):
    """torch.load with weights_only=True; anything else is one clear error."""
    import pickle

    import torch

    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f"it needs {found.group(1)}" if found else type(err).__name__
        raise ConversionError(
            f"{path}: holds Python objects other than tensors and plain containers, which "
            f"torch.load(weights_only=True) refuses ({what}); re-save it with plain dicts "
            "and lists (e.g. OmegaConf.to_container for configs)") from None
    except Exception as err:  # truncated zip, not a torch file at all
        first = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:160]
        raise ConversionError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {first}); "
                              "the file is damaged or of another format") from None


def load_training_checkpoint(path: Path):
    """A training checkpoint (Lightning .ckpt, omegaconf hyper_parameters) as plain data."""
    from pretrain.official.safe_unpickle import NotACheckpoint, Refused, load_checkpoint

    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        return load_checkpoint(path)
    except Refused as err:
        raise ConversionError(f"{path}: {err}; refusing it (re-save the checkpoint with plain dicts "
                              "and lists if the object is needed)") from None
    except NotACheckpoint as err:
        raise ConversionError(f"{path}: {err}") from None
    except Exception as err:  # damaged, truncated, another format, nested past the recursion limit
        first = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:160]
        raise ConversionError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {first}); "
                              "the file is damaged or of another format") from None


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConversionError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConversionError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def tensor_dict(value, where: str, what: str = "state dict") -> dict:
    """`value` must be a mapping of names to tensors."""
    import torch

    if not isinstance(value, dict) or not value:
        raise ConversionError(f"{where}: the {what} is missing or not a mapping of tensor names")
    bad = [name for name, tensor in value.items() if not isinstance(tensor, torch.Tensor)]
    if bad:
        raise ConversionError(f"{where}: {what} entries {bad[:3]} are not tensors")
    return value


def strip_prefix(state: dict, prefix: str, where: str) -> dict:
    outside = [name for name in state if not name.startswith(prefix)]
    if outside:
        raise ConversionError(f"{where}: tensors {outside[:3]} are not under the official prefix "
                              f"{prefix!r}; is this a checkpoint of another family?")
    return {name[len(prefix):]: tensor for name, tensor in state.items()}


_TYPES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
          list: "a list", dict: "a mapping"}


class OfficialConfig:
    """One official config mapping read strictly: `get` what is used, `ignore` what has no
    effect on the model, `refuse` what is not implemented exactly, `finish` refuses the rest."""

    def __init__(self, data, where: str):
        if not isinstance(data, dict):
            raise ConversionError(f"{where}: expected a mapping, got {type(data).__name__}")
        self.data, self.where, self.seen = data, where, set()

    def get(self, key: str, default, kind=None):
        self.seen.add(key)
        value = self.data.get(key, default)
        if kind is not None and value is not None:
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if kind is float else (
                isinstance(value, kind) and not (kind is int and isinstance(value, bool)))
            if not ok:
                raise ConversionError(f"{self.where}: {key}={value!r} must be {_TYPES[kind]}")
            if kind is float:
                value = float(value)
        return value

    def need(self, key: str, kind):
        if key not in self.data:
            raise ConversionError(f"{self.where}: required key {key!r} is missing")
        return self.get(key, None, kind)

    def ignore(self, *keys: str) -> None:
        self.seen.update(keys)

    def refuse(self, key: str, value, why: str):
        raise ConversionError(f"{self.where}: {key}={value!r} {why}; refusing rather than approximating")

    def only(self, key: str, default, allowed: tuple, kind=None):
        value = self.get(key, default, kind)
        if value not in allowed:
            self.refuse(key, value, f"is not implemented exactly here (supported: {list(allowed)})")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise ConversionError(f"{self.where}: unknown official config key(s) {unknown}; "
                                  "this converter does not know what they change")
