"""Shared fixtures: tiny real models per modality and one real 2-process ZeRO-3 checkpoint.

The checkpoint is written once per session by two gloo processes running a real DeepSpeed
engine (tests/export/deepspeed_checkpoint.py); tests that corrupt it work on copies.
"""
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import tiny_model_config, tokenizer_dict  # noqa: E402


@pytest.fixture(scope="session")
def zero3_run(tmp_path_factory):
    """(run_dir, model_config, probe logits of the training engine after its last step)."""
    from deepspeed_checkpoint import write_checkpoint

    run_dir = tmp_path_factory.mktemp("zero3_run")
    config = tiny_model_config("protein")
    logits = write_checkpoint(run_dir, config, zero_stage=3, world_size=2)
    return run_dir, config, logits


@pytest.fixture
def zero3_copy(zero3_run, tmp_path):
    """A private copy of the session checkpoint, safe to damage."""
    run_dir, config, logits = zero3_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy, config, logits


@pytest.fixture(scope="session")
def protein_tokenizer():
    return tokenizer_dict("protein")
