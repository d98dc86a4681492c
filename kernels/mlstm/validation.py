"""Shape, dtype and device checks of the public mLSTM ops, each failing with one clear error."""

import torch

from kernels.errors import KernelInputError
from kernels.mlstm.chunking import is_valid_chunk_size


def _check_tensor(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise KernelInputError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise KernelInputError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")


def _expect_shape(name: str, x: torch.Tensor, expected: tuple, layout: str) -> None:
    if tuple(x.shape) != tuple(expected):
        raise KernelInputError(f"{name}: expected shape {layout} = {tuple(expected)}, got {tuple(x.shape)}")


def check_state(name: str, state, B: int, H: int, Dqk: int, Dv: int, device: torch.device) -> None:
    """A state must be (C (B, H, Dqk, Dv), n (B, H, Dqk), m (B, H)) on the inputs' device."""
    if not isinstance(state, (tuple, list)) or len(state) != 3:
        raise KernelInputError(f"{name}: expected a tuple (C, n, m), got {type(state).__name__}")
    for part, x, expected, layout in zip(
        "Cnm", state, ((B, H, Dqk, Dv), (B, H, Dqk), (B, H)), ("(B, H, Dqk, Dv)", "(B, H, Dqk)", "(B, H)")
    ):
        _check_tensor(f"{name}.{part}", x)
        _expect_shape(f"{name}.{part}", x, expected, layout)
        if x.device != device:
            raise KernelInputError(f"{name}.{part}: on {x.device}, but the inputs are on {device}")


def _check_same_device(named: dict) -> torch.device:
    devices = {name: x.device for name, x in named.items()}
    device = devices["q"]
    for name, other in devices.items():
        if other != device:
            raise KernelInputError(f"{name}: on {other}, but q is on {device}; move all inputs to one device")
    return device


def check_resets(resets, B: int, S: int, device: torch.device) -> None:
    """`resets` must be a bool (B, S) tensor on the inputs' device (or None)."""
    if resets is None:
        return
    if not isinstance(resets, torch.Tensor):
        raise KernelInputError(f"resets: expected a bool torch.Tensor (B, S) or None, got {type(resets).__name__}")
    if resets.dtype != torch.bool:
        raise KernelInputError(f"resets: expected dtype torch.bool (True where the state is reset), got {resets.dtype}")
    _expect_shape("resets", resets, (B, S), "(B, S)")
    if resets.device != device:
        raise KernelInputError(f"resets: on {resets.device}, but the inputs are on {device}")


def check_sequence_inputs(q, k, v, i, f, initial_state, chunk_size, resets=None) -> None:
    """Inputs of mlstm_chunkwise: q, k (B, H, S, Dqk); v (B, H, S, Dv); i, f (B, H, S);
    resets (B, S) bool or None."""
    named = {"q": q, "k": k, "v": v, "i": i, "f": f}
    for name, x in named.items():
        _check_tensor(name, x)
    if q.dim() != 4:
        raise KernelInputError(f"q: expected 4 dims (B, H, S, Dqk), got shape {tuple(q.shape)}")
    B, H, S, Dqk = q.shape
    if S < 1:
        raise KernelInputError("q: the sequence length S (dim 2) must be at least 1")
    _expect_shape("k", k, q.shape, "(B, H, S, Dqk)")
    if v.dim() != 4 or tuple(v.shape[:3]) != (B, H, S):
        raise KernelInputError(f"v: expected shape (B, H, S, Dv) with (B, H, S) = {(B, H, S)}, got {tuple(v.shape)}")
    _expect_shape("i", i, (B, H, S), "(B, H, S)")
    _expect_shape("f", f, (B, H, S), "(B, H, S)")
    device = _check_same_device(named)
    if initial_state is not None:
        check_state("initial_state", initial_state, B, H, Dqk, v.shape[-1], device)
    check_resets(resets, B, S, device)
    if not is_valid_chunk_size(chunk_size):
        raise KernelInputError(f"chunk_size: expected 'auto' or a positive int, got {chunk_size!r}")


def check_step_inputs(q, k, v, i, f, state) -> None:
    """Inputs of mlstm_step: q, k (B, H, Dqk); v (B, H, Dv); i, f (B, H)."""
    named = {"q": q, "k": k, "v": v, "i": i, "f": f}
    for name, x in named.items():
        _check_tensor(name, x)
    if q.dim() != 3:
        raise KernelInputError(f"q: expected 3 dims (B, H, Dqk) for one token, got shape {tuple(q.shape)}")
    B, H, Dqk = q.shape
    _expect_shape("k", k, q.shape, "(B, H, Dqk)")
    if v.dim() != 3 or tuple(v.shape[:2]) != (B, H):
        raise KernelInputError(f"v: expected shape (B, H, Dv) with (B, H) = {(B, H)}, got {tuple(v.shape)}")
    _expect_shape("i", i, (B, H), "(B, H)")
    _expect_shape("f", f, (B, H), "(B, H)")
    device = _check_same_device(named)
    if state is not None:
        check_state("state", state, B, H, Dqk, v.shape[-1], device)
