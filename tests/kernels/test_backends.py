"""Backend registry and input validation of the public kernels API: bad names and bad shapes
get one clear, user-facing error naming the argument."""

import functools
import sys

import pytest
import torch

import kernels
from kernels.errors import BackendUnavailableError, KernelInputError, UnknownBackendError
from kernels.mlstm.backends import get_mlstm_backend, register_mlstm_backend, resolve_mlstm_backend
from kernels.mlstm.reference import mlstm_parallel_reference
from mlstm_cases import assert_close, make_inputs, outputs_and_grads


def qkvif(B=2, H=3, S=12, Dqk=8, Dv=4, **kw):
    x = make_inputs(B, H, S, Dqk, Dv, **kw)
    return [x[name] for name in "qkvif"]


def test_builtin_backends_are_listed():
    assert {"reference", "torch", "triton", "auto"} <= set(kernels.list_mlstm_backends())


def test_unknown_backend_names_the_known_ones():
    with pytest.raises(UnknownBackendError) as info:
        kernels.mlstm_chunkwise(*qkvif(), backend="flash")
    assert info.value.user_facing is True
    message = str(info.value)
    assert "'flash'" in message and all(name in message for name in ("reference", "torch", "triton", "auto"))


@pytest.mark.parametrize("backend", ["reference", "torch", "auto"])
def test_cpu_backends_agree_with_the_reference(backend):
    args = qkvif(dtype=torch.float64, gates="wide")
    ref = mlstm_parallel_reference(*args)
    torch.testing.assert_close(kernels.mlstm_chunkwise(*args, backend=backend, chunk_size=4), ref, rtol=1e-10, atol=1e-12)


def test_auto_picks_triton_only_on_cuda():
    assert resolve_mlstm_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_mlstm_backend("auto", torch.device("cuda", 0)) == "triton"
    assert resolve_mlstm_backend("reference", torch.device("cuda", 0)) == "reference"


def test_registered_backend_is_used_by_name(monkeypatch):
    calls = []

    def recording_backend(q, k, v, i, f, initial_state=None, return_final_state=False, chunk_size=64):
        calls.append(chunk_size)
        return mlstm_parallel_reference(q, k, v, i, f, initial_state, return_final_state)

    monkeypatch.setattr("kernels.mlstm.backends._BACKENDS", dict(kernels.mlstm.backends._BACKENDS))
    register_mlstm_backend("recording", recording_backend)
    assert "recording" in kernels.list_mlstm_backends()
    kernels.mlstm_chunkwise(*qkvif(), backend="recording", chunk_size=4)
    assert calls == [4]


def test_triton_backend_fails_clearly_when_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "kernels.mlstm.autograd", None)   # import of it now fails
    with pytest.raises(BackendUnavailableError, match="triton.*backend='torch'") as info:
        get_mlstm_backend("triton")(*qkvif())
    assert info.value.user_facing is True


def test_segments_auto_is_one_on_cpu():
    assert kernels.choose_num_segments(1, 1, 2 ** 16, 64, torch.device("cpu")) == 1


def test_segments_auto_fills_the_sms_of_a_gpu(monkeypatch):
    """With a 132-SM device: B*H = 8 recurrences get up to 32 segments, but each keeps 8 chunks."""
    class Properties:
        multi_processor_count = 132

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Properties())
    cuda = torch.device("cuda", 0)
    assert kernels.choose_num_segments(1, 8, 2 ** 16, 64, cuda) == 32
    assert kernels.choose_num_segments(1, 8, 2 ** 11, 64, cuda) == 4         # 512 tokens per segment
    assert kernels.choose_num_segments(64, 8, 2 ** 16, 64, cuda) == 1        # GPU already full
    assert kernels.choose_num_segments(1, 8, 3 * 2 ** 10 + 64, 64, cuda) == 1  # no equal split


@pytest.mark.parametrize(
    "name, bad, pattern",
    [
        ("k", torch.zeros(2, 3, 12, 7), r"k: expected shape \(B, H, S, Dqk\)"),
        ("v", torch.zeros(2, 3, 11, 4), r"v: expected shape \(B, H, S, Dv\)"),
        ("i", torch.zeros(2, 3, 12, 1), r"i: expected shape \(B, H, S\)"),
        ("f", torch.zeros(2, 3, 12, dtype=torch.long), "f: expected a floating-point tensor"),
        ("q", torch.zeros(2, 12, 8), r"q: expected 4 dims"),
    ],
)
def test_bad_shapes_name_the_argument(name, bad, pattern):
    args = dict(zip("qkvif", qkvif()))
    args[name] = bad
    with pytest.raises(KernelInputError, match=pattern) as info:
        kernels.mlstm_chunkwise(*(args[k] for k in "qkvif"))
    assert info.value.user_facing is True


def test_bad_initial_state_and_chunk_size_are_named():
    args = qkvif()
    good = (torch.zeros(2, 3, 8, 4), torch.zeros(2, 3, 8), torch.zeros(2, 3))
    with pytest.raises(KernelInputError, match=r"initial_state.C: expected shape \(B, H, Dqk, Dv\)"):
        kernels.mlstm_chunkwise(*args, initial_state=(torch.zeros(2, 3, 4, 8),) + good[1:])
    with pytest.raises(KernelInputError, match=r"initial_state: expected a tuple \(C, n, m\)"):
        kernels.mlstm_chunkwise(*args, initial_state=good[:2])
    with pytest.raises(KernelInputError, match="chunk_size: expected .auto. or a positive int"):
        kernels.mlstm_chunkwise(*args, chunk_size=0)


def test_bad_step_inputs_are_named():
    q, k, v, i, f = (x[:, :, 0] for x in qkvif())
    with pytest.raises(KernelInputError, match=r"v: expected shape \(B, H, Dv\)"):
        kernels.mlstm_step(q, k, v[:1], i, f)
    with pytest.raises(KernelInputError, match=r"state.m: expected shape \(B, H\)"):
        kernels.mlstm_step(q, k, v, i, f, (torch.zeros(2, 3, 8, 4), torch.zeros(2, 3, 8), torch.zeros(2)))


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_output_dtype_follows_v_and_state_is_fp32(backend):
    x = make_inputs(1, 2, 10, 8, 4, dtype=torch.bfloat16)
    x["i"], x["f"] = x["i"].float(), x["f"].float()          # gates kept in fp32, as models do
    h, (C, n, m) = kernels.mlstm_chunkwise(*(x[k] for k in "qkvif"), backend=backend, return_final_state=True)
    assert h.dtype == torch.bfloat16 and C.dtype == n.dtype == m.dtype == torch.float32


def test_torch_backend_traces_into_one_graph():
    """torch.compile sees the torch backend as plain ops (no graph break), values and gradients
    unchanged."""
    x = make_inputs(2, 2, 40, 8, 4)
    leaves = [x[k].requires_grad_() for k in "qkvif"]
    eager = kernels.mlstm_chunkwise(*leaves, backend="torch", chunk_size=16)
    eager_grads = torch.autograd.grad(eager.sum(), leaves)
    compiled = torch.compile(functools.partial(kernels.mlstm_chunkwise, backend="torch", chunk_size=16),
                             backend="aot_eager", fullgraph=True)
    out = compiled(*leaves)
    torch.testing.assert_close(out, eager, rtol=1e-6, atol=1e-6)
    for got, ref in zip(torch.autograd.grad(out.sum(), leaves), eager_grads):
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


def test_triton_backend_through_the_registry_matches_the_reference():
    """Integration of helper A2's kernels with the registry and with segments (Triton runs in
    its CPU interpreter here); skipped until kernels.mlstm.autograd exists."""
    pytest.importorskip("kernels.mlstm.autograd")

    # S = 36: padded to 48 whole, or to 2 x 32 as two segments of 18
    inputs = make_inputs(1, 2, 36, 16, 16, dtype=torch.float32, gates="moderate", with_state=True)
    ref = outputs_and_grads(mlstm_parallel_reference, inputs, dtype=torch.float64)
    for segments in (1, 2):
        got = outputs_and_grads(kernels.mlstm_chunkwise, inputs, backend="triton", chunk_size=16, segments=segments)
        assert_close(got, ref, tol=1e-5)


def test_backend_that_needs_whole_chunks_gets_exact_padding(monkeypatch):
    """A backend registered with any_length=False only ever sees whole chunks, and the padding
    leaves h, the final state (m near -60, below the peers' pad value -25) and all gradients
    exact; also when segments split the sequence into partial chunks."""
    seen_lengths = []

    def whole_chunks_only(q, k, v, i, f, initial_state=None, return_final_state=False, chunk_size=64):
        assert q.shape[2] % chunk_size == 0
        seen_lengths.append(q.shape[2])
        return mlstm_parallel_reference(q, k, v, i, f, initial_state, return_final_state)

    monkeypatch.setattr("kernels.mlstm.backends._BACKENDS", dict(kernels.mlstm.backends._BACKENDS))
    register_mlstm_backend("whole_chunks", whole_chunks_only, any_length=False)
    inputs = make_inputs(2, 2, 38, 8, 6, dtype=torch.float64, gates="moderate", with_state=True)
    inputs["i"] = inputs["i"] - 62.0
    inputs["m0"] = inputs["m0"] - 60.0
    ref = outputs_and_grads(mlstm_parallel_reference, inputs)
    for segments in (1, 2):
        got = outputs_and_grads(kernels.mlstm_chunkwise, inputs, backend="whole_chunks", chunk_size=16, segments=segments)
        assert_close(got, ref, tol=1e-10)
    assert seen_lengths == [48, 32]
