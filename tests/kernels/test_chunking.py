"""The chunk-size rule of chunk_size="auto" (kernels/mlstm/chunking.py): one place, used by every
backend, and the public op resolves it before backends and segments see the chunk size."""

import pytest
import torch

import kernels
from kernels.errors import KernelInputError
from kernels.mlstm.chunking import choose_chunk_size, resolve_chunk_size
from mlstm_cases import make_inputs


@pytest.mark.parametrize("Dqk, Dv, expected", [
    (512, 512, 1024),      # Prot-xLSTM-102M: the chunk the paper's code ran
    (256, 256, 1024),      # Prot-xLSTM-26M
    (128, 128, 1024),      # DNA-xLSTM-2M, Chem-xLSTM-15M
    (64, 64, 1024),        # DNA-xLSTM-500k
    (16, 16, 1024),        # below the table: its smallest entry
    (512, 128, 1024),      # the larger dim
])
def test_rule_takes_the_chunk_of_lowest_roofline_bound(Dqk, Dv, expected):
    assert choose_chunk_size(Dqk, Dv) == expected


def test_table_entries_are_used_by_the_rounded_up_head_dim(monkeypatch):
    monkeypatch.setattr("kernels.mlstm.chunking.AUTO_CHUNK", {64: 128, 128: 256, 256: 512})
    assert choose_chunk_size(100, 100) == 256
    assert choose_chunk_size(16, 16) == 128
    assert choose_chunk_size(4096, 64) == 512


def test_rule_never_exceeds_the_sequence():
    assert choose_chunk_size(512, 512, S=2048) == 1024
    assert choose_chunk_size(512, 512, S=300) == 512
    assert choose_chunk_size(512, 512, S=5) == 16


def test_an_int_is_kept_and_auto_is_resolved():
    assert resolve_chunk_size(48, 512, 512, 4096) == 48
    assert resolve_chunk_size("auto", 256, 256, 4096) == 1024


def test_public_op_resolves_auto_before_the_backend(monkeypatch):
    seen = []

    def recording(q, k, v, i, f, initial_state=None, return_final_state=False, chunk_size=64):
        seen.append(chunk_size)
        return v.clone()

    monkeypatch.setattr("kernels.mlstm.backends._BACKENDS", dict(kernels.mlstm.backends._BACKENDS))
    kernels.register_mlstm_backend("recording", recording)
    x = make_inputs(1, 2, 200, 64, 64)                    # auto: 1024, capped by S = 200 to 256
    kernels.mlstm_chunkwise(*(x[name] for name in "qkvif"), backend="recording")
    kernels.mlstm_chunkwise(*(x[name] for name in "qkvif"), backend="recording", chunk_size=16)
    assert seen == [256, 16]


@pytest.mark.parametrize("bad", ["big", 0, -64, 2.5, True])
def test_bad_chunk_sizes_name_the_argument(bad):
    x = make_inputs(1, 1, 8, 4, 4)
    with pytest.raises(KernelInputError, match="chunk_size: expected 'auto' or a positive int"):
        kernels.mlstm_chunkwise(*(x[name] for name in "qkvif"), chunk_size=bad)


def test_auto_agrees_with_the_reference_on_cpu():
    x = make_inputs(1, 2, 70, 8, 8, dtype=torch.float64, gates="wide")
    args = [x[name] for name in "qkvif"]
    got = kernels.mlstm_chunkwise(*args)
    ref = kernels.mlstm_chunkwise(*args, backend="reference")
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
