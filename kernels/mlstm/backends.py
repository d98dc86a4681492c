"""Registry of mLSTM sequence backends, chosen by name from config.

A backend is a function `fn(q, k, v, i, f, initial_state=None, return_final_state=False,
chunk_size=64, resets=None)` with the semantics of docs/INTERFACES.md (resets: (B, S) bool or
None, kernels/mlstm/resets.py). Built in: "reference" (float64-capable
parallel form), "torch" (pure torch chunkwise), "triton" (Triton kernels, imported lazily on
first use so that a missing or broken Triton only matters when that backend is chosen).
"auto" is not a backend but a choice made per call: "triton" on CUDA tensors, "torch" otherwise
(no silent fallback: on CUDA without working Triton kernels, "auto" fails with the reason).
"""

from typing import Callable, Dict, List

import torch

from kernels.errors import BackendUnavailableError, UnknownBackendError
from kernels.mlstm.padding import with_exact_padding

_BACKENDS: Dict[str, Callable] = {}
AUTO = "auto"


def register_mlstm_backend(name: str, fn: Callable, *, any_length: bool = True) -> None:
    """Register (or replace) the backend `name`.

    `any_length=False` declares that `fn` needs S to be a multiple of chunk_size; it is then
    wrapped with exact padding (kernels/mlstm/padding.py), so every registered backend takes
    any S.
    """
    if not isinstance(name, str) or not name or name == AUTO:
        raise ValueError(f"backend name must be a non-empty string other than {AUTO!r}, got {name!r}")
    _BACKENDS[name] = fn if any_length else with_exact_padding(fn)


def list_mlstm_backends() -> List[str]:
    """Registered backend names (plus "auto", which picks one of them per call)."""
    return sorted(_BACKENDS) + [AUTO]


def get_mlstm_backend(name: str) -> Callable:
    """The backend function registered as `name`; unknown names list the known ones."""
    try:
        return _BACKENDS[name]
    except (KeyError, TypeError):
        raise UnknownBackendError(
            f"unknown mLSTM backend {name!r}; known backends: {', '.join(list_mlstm_backends())}"
        ) from None


def resolve_mlstm_backend(name: str, device: torch.device) -> str:
    """Turn "auto" into a concrete backend name for tensors on `device`."""
    if name != AUTO:
        get_mlstm_backend(name)
        return name
    return "triton" if device.type == "cuda" else "torch"


def _reference_backend(q, k, v, i, f, initial_state=None, return_final_state=False, chunk_size=64,
                       resets=None):
    """The parallel reference under the backend signature (chunk_size has no meaning for it);
    h comes back in v's dtype like every backend, the state in fp32 (float64 stays float64)."""
    from kernels.mlstm.reference import mlstm_parallel_reference

    out = mlstm_parallel_reference(q, k, v, i, f, initial_state=initial_state,
                                   return_final_state=return_final_state, resets=resets)
    if not return_final_state:
        return out.to(v.dtype)
    return out[0].to(v.dtype), out[1]


def _torch_backend(q, k, v, i, f, initial_state=None, return_final_state=False, chunk_size=64,
                   resets=None):
    from kernels.mlstm.chunkwise_torch import mlstm_chunkwise_torch

    return mlstm_chunkwise_torch(q, k, v, i, f, initial_state=initial_state,
                                 return_final_state=return_final_state, chunk_size=chunk_size,
                                 resets=resets)


def _load_triton_kernel() -> Callable:
    try:
        from kernels.mlstm.autograd import mlstm_chunkwise_triton
    except Exception as exc:  # ImportError, or triton itself failing to initialise
        raise BackendUnavailableError(
            f"mLSTM backend 'triton' cannot be used here ({type(exc).__name__}: {exc}); "
            f"install a working triton or choose backend='torch'"
        ) from exc
    return mlstm_chunkwise_triton


@torch.compiler.disable
def _triton_backend(q, k, v, i, f, initial_state=None, return_final_state=False, chunk_size=64,
                    resets=None):
    """Triton kernels, kept out of torch.compile tracing (they are opaque to it)."""
    return _load_triton_kernel()(q, k, v, i, f, initial_state=initial_state,
                                 return_final_state=return_final_state, chunk_size=chunk_size,
                                 resets=resets)


register_mlstm_backend("reference", _reference_backend)
register_mlstm_backend("torch", _torch_backend)
register_mlstm_backend("triton", _triton_backend)   # pads to whole tiles itself
