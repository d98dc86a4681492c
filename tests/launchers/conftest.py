"""Fixtures for launcher tests: fake SLURM commands on PATH."""
from __future__ import annotations

import sys

import pytest

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
