"""Fixtures for launcher tests: fake SLURM commands on PATH, a tiny run config."""
from __future__ import annotations

import sys
import textwrap

import pytest
import yaml

from fake_slurm import fake_slurm_environ, install_fake_slurm


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """Puts fake sbatch/srun/sacct/scontrol/scancel first on PATH; yields the call log path."""
    bin_dir = tmp_path / "fake_bin"
    log_path = tmp_path / "slurm_calls.jsonl"
    install_fake_slurm(bin_dir, log_path, sys.executable)
    for key, value in fake_slurm_environ(bin_dir, log_path).items():
        monkeypatch.setenv(key, value)
    return log_path


# Three curriculum stages, data path never read: enough for option checks and submission.
RUN = """
model:
  base: {model_base}
data:
  modality: protein
  shards: {shards}
train:
  out_dir: {out_dir}
  lr: 6e-4
curriculum:
  stages:
    - {{context_len: 256, micro_batch_size: 4, tokens: 1e6}}
    - {{context_len: 512, micro_batch_size: 2, tokens: 2e6}}
    - {{context_len: 1024, micro_batch_size: 1, tokens: 4e6}}
"""


@pytest.fixture
def run_config(tmp_path):
    """A valid run config (model base file beside it) whose out_dir is tmp_path/runs/prot."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny.yaml").write_text(yaml.safe_dump(
        {"vocab_size": 38, "d_model": 32, "num_blocks": 2, "num_heads": 2}))
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent(RUN.format(model_base="models/tiny.yaml", shards=tmp_path / "shards",
                                               out_dir=tmp_path / "runs" / "prot")))
    return path
