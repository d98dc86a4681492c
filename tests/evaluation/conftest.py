"""Evaluation tests run tiny models step by step: one torch thread each, since two threads only
contend on a shared 2-core machine (sampling measured 40x slower with two under load)."""
import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
