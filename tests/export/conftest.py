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
    """(run_dir, model_config, probe logits of the training engine after its last step).

    A run directory as the trainer leaves it: the resolved config.yaml pointing at a real
    protein data build (which holds the tokenizer), and checkpoints/ written through
    pretrain.checkpoint.CheckpointManager (DeepSpeed ZeRO-3 shards of 2 ranks, one TrainState
    per rank, manifest, `latest`).
    """
    from data_pipeline.config import DataConfig
    from data_pipeline.demo import build_demo_shards
    from deepspeed_checkpoint import write_checkpoint
    from modeling import ModelConfig
    from pretrain.config import CurriculumConfig, RunConfig, StageConfig, TrainConfig

    root = tmp_path_factory.mktemp("zero3")
    run_dir = root / "run"
    shards = build_demo_shards(root / "protein_shards", "protein")
    config = tiny_model_config("protein")
    stages = [StageConfig(context_len=64, micro_batch_size=2, tokens=10**4),
              StageConfig(context_len=128, micro_batch_size=1, tokens=10**4)]
    RunConfig(model=ModelConfig.from_dict(config), data=DataConfig(modality="protein", shards=str(shards)),
              train=TrainConfig(out_dir=str(run_dir), zero_stage=3),
              curriculum=CurriculumConfig(stages=stages)).save(run_dir)
    logits = write_checkpoint(run_dir, config, zero_stage=3, world_size=2, with_train_state=True)
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
