"""Test-wide environment: Triton runs in its CPU interpreter, DeepSpeed on the CPU accelerator.

Both variables must be set before triton or deepspeed is imported anywhere, which is why they
live here and not in individual tests.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_everything():
    """Each test starts from a known seed; tests that want fresh randomness draw their own."""
    torch.manual_seed(0)
    yield
