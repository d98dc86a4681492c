"""TrainState: everything besides weights and optimizer that a resume needs, as one object.

Step, tokens, curriculum stage, this rank's loader position, the RNG states of python, numpy
and torch (CPU and CUDA), the hash of the run config and the model config it was trained with
(a resume with another model config is refused), and the current streak of skipped
non-finite steps (a preemption must not reset the train.max_bad_steps count). One per rank in
every checkpoint.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

STATE_VERSION = 1


def capture_rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainState:
    step: int = 0                        # optimizer steps taken
    tokens: int = 0                      # tokens consumed by those steps (all ranks)
    stage: int = 0                       # curriculum stage of the next step
    loader_state: Optional[dict] = None  # this rank's train loader position within `stage`
    rank: int = 0
    world_size: int = 1
    config_hash: str = ""
    model_config: dict = field(default_factory=dict)
    last_val_loss: Optional[float] = None
    bad_steps_in_a_row: int = 0          # skipped non-finite steps ending at `step` (train.max_bad_steps)
    rng: Optional[dict] = None           # filled by state_dict(), applied by load_state_dict()

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION, "step": self.step, "tokens": self.tokens, "stage": self.stage,
            "loader_state": self.loader_state, "rank": self.rank, "world_size": self.world_size,
            "config_hash": self.config_hash, "model_config": self.model_config,
            "last_val_loss": self.last_val_loss, "bad_steps_in_a_row": self.bad_steps_in_a_row,
            "rng": capture_rng_state(),
        }

    def load_state_dict(self, state: dict, restore_rng: bool = True) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"train state version {state.get('version')!r}, expected {STATE_VERSION}")
        for name in ("step", "tokens", "stage", "loader_state", "rank", "world_size", "config_hash",
                     "model_config", "last_val_loss"):
            setattr(self, name, state[name])
        self.bad_steps_in_a_row = int(state.get("bad_steps_in_a_row", 0))   # absent before it was saved
        self.rng = state["rng"]
        if restore_rng:
            restore_rng_state(self.rng)

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "tokens": self.tokens, "stage": self.stage}
