"""Assertions shared by the conversion tests."""
from __future__ import annotations

import torch


def rel_err(actual, expected) -> float:
    actual, expected = actual.detach().double(), expected.detach().double()
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-300))


def assert_byte_identical(written: dict, original: dict) -> None:
    """Same names, dtypes, shapes and bytes."""
    assert sorted(written) == sorted(original)
    for name, tensor in original.items():
        other = written[name]
        assert other.dtype == tensor.dtype and other.shape == tensor.shape, name
        as_bytes = lambda t: t.contiguous().reshape(-1).view(torch.uint8)   # noqa: E731
        assert torch.equal(as_bytes(other), as_bytes(tensor)), name


def converted_logits(export_dir, ids, positions=None):
    """Logits of an export directory's model in float64, as a downstream team would load it; the
    mLSTM runs on the float64 reference kernel (the chunkwise kernels keep fp32 states)."""
    from modeling.inference import load

    model = load(export_dir, dtype=torch.float64)
    model.config.kernel_backend = "reference"
    with torch.no_grad():
        return model.model(ids, position_ids=positions), model
