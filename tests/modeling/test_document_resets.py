"""A packed row equals its documents run alone (DESIGN.md section 9), values and the gradient of
every parameter, in float64, for every model variant: causal (mLSTM with the sequence index,
mLSTM + sLSTM), bidirectional (both wrappers, both alternating parities, both reversed-position
rules), RC (the project's RC-equivariant mLSTM, the official RC-PS sLSTM halves, post-hoc), with
in-GPU segments on. Documents have lengths that are not multiples of the chunk (4), one of
length 1, and starts inside and at the edge of chunks."""
import pytest
import torch

import kernels
from modeling import ModelInputError, build_model
from modeling.documents import DocumentLayout
from helpers import tiny

# per row: document lengths (sum 23); starts at 0, 5, 8 (chunk edge), 9 (a document of length 1),
# 10, 16 (chunk edge); the second row ends with a document of length 1
LENGTHS = [[5, 3, 1, 1, 6, 7], [4, 9, 9, 1]]
S = 23
VARIANTS = {
    "causal_sequence_index": dict(position_encoding="rope_inner", gates_after_rope=True, num_sequence_index=4,
                                  cls_token_id=7, vocab_size=12),
    "causal_mlstm_slstm": dict(slstm_positions=[1], vocab_size=12),
    "weight_tied_branch": dict(bidirectional="weight_tied", head="mlm", vocab_size=12),
    "weight_tied_official": dict(bidirectional="weight_tied", bidirectional_residual="whole_block",
                                 reversed_positions="flipped_index", head="mlm", vocab_size=12, mlstm_bias=True),
    "alternating_odd_slstm": dict(bidirectional="alternating", head="mlm", num_blocks=3, slstm_positions=[1],
                                  vocab_size=12),
    "alternating_even_official": dict(bidirectional="alternating", reversed_blocks="even", num_blocks=3,
                                      reversed_positions="flipped_index", head="mlm", vocab_size=12),
    "rc_equivariant_mlstm": dict(rc_mode="param_sharing", head="mlm", vocab_size=16),
    "rc_ps_slstm_halves": dict(rc_mode="param_sharing_halves", head="mlm", vocab_size=12, slstm_positions=[0, 1],
                               position_encoding="none"),
    "rc_ps_slstm_official": dict(rc_mode="param_sharing_halves", rc_half_slstm_head_order="reversed", head="mlm",
                                 vocab_size=12, slstm_positions=[0, 1], slstm_gate_layout="headwise",
                                 bidirectional="weight_tied", bidirectional_residual="whole_block",
                                 position_encoding="none"),
    "rc_post_hoc": dict(rc_mode="post_hoc", bidirectional="weight_tied", head="mlm", vocab_size=12),
}


def _starts(layout=LENGTHS):
    return torch.tensor([[flag for n in lengths for flag in [True] + [False] * (n - 1)] for lengths in layout])


def _model(name, **overrides):
    torch.manual_seed(3)
    model = build_model(tiny(**{**VARIANTS[name], **overrides})).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _inputs(vocab_size, layout=LENGTHS):
    g = torch.Generator().manual_seed(4)
    length = sum(layout[0])
    ids = torch.randint(7, 12, (len(layout), length), generator=g)     # DNA bases (and cls = 7)
    weight = torch.randn(len(layout), length, vocab_size, generator=g, dtype=torch.float64)
    return ids, weight


def _packed_and_alone(model, position_ids=None, layout=LENGTHS):
    """(logits, grads) of the packed rows, and of every document run on its own."""
    ids, weight = _inputs(model.cfg.vocab_size, layout)
    logits = model(ids, position_ids=position_ids, document_starts=_starts(layout))
    (logits * weight).sum().backward()
    packed = (logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    model.zero_grad()
    pieces, total = [], 0.0
    for b, lengths in enumerate(layout):
        row, lo = [], 0
        for n in lengths:
            pos = None if position_ids is None else position_ids[b:b + 1, lo:lo + n]
            out = model(ids[b:b + 1, lo:lo + n], position_ids=pos)
            total = total + (out * weight[b:b + 1, lo:lo + n]).sum()
            row.append(out.detach())
            lo += n
        pieces.append(torch.cat(row, dim=1))
    total.backward()
    alone = (torch.cat(pieces), {n: p.grad.clone() for n, p in model.named_parameters()})
    model.zero_grad()
    return packed, alone


def _assert_equal(packed, alone, tol=1e-10):
    def rel(a, b):
        scale = b.abs().max()
        return ((a - b).abs().max() / scale).item() if scale > 0 else a.abs().max().item()

    errors = {"logits": rel(packed[0], alone[0])}
    errors.update({f"grad:{n}": rel(packed[1][n], alone[1][n]) for n in alone[1]})
    bad = {k: f"{v:.1e}" for k, v in errors.items() if not v <= tol}
    assert not bad, f"relative errors above {tol}: {bad}"


@pytest.mark.parametrize("name", list(VARIANTS))
def test_packed_row_equals_documents_alone_float64(name):
    _assert_equal(*_packed_and_alone(_model(name)))


def test_data_positions_and_a_different_layout_give_a_different_result():
    """Given position ids are used as they are; and the comparison can fail: the same rows
    without document starts differ from the documents alone."""
    model = _model("causal_sequence_index")
    positions = torch.randint(0, 30, (len(LENGTHS), S), generator=torch.Generator().manual_seed(5))
    _assert_equal(*_packed_and_alone(model, positions))
    ids, _ = _inputs(model.cfg.vocab_size)
    with torch.no_grad():
        unpacked = model(ids)
        packed = model(ids, document_starts=_starts())
    assert (unpacked - packed).abs().max() > 1e-3


@pytest.mark.parametrize("segments", [2, 4])
@pytest.mark.parametrize("name", ["causal_sequence_index", "weight_tied_official"])
def test_packed_row_with_in_gpu_segments(name, segments, monkeypatch):
    """segments="auto" picks P only on a GPU; here P is forced. 24 tokens; row 0 has starts at
    the segment edges 6, 12 and 18 (P = 4) and 12 (P = 2)."""
    monkeypatch.setattr(kernels, "choose_num_segments",
                        lambda B, H, S, chunk, device: segments if S % segments == 0 else 1)
    layout = [[6, 2, 1, 1, 2, 6, 6], [4, 9, 9, 2]]
    calls = []
    original = kernels.mlstm_segmented
    monkeypatch.setattr(kernels, "mlstm_segmented", lambda *a, **k: calls.append(1) or original(*a, **k))
    _assert_equal(*_packed_and_alone(_model(name), layout=layout))
    assert calls                                         # the packed rows did run segmented


@pytest.mark.parametrize("name", ["causal_sequence_index", "weight_tied_official", "rc_equivariant_mlstm"])
def test_packed_row_on_the_triton_kernels_matches_float64_documents_alone(name):
    """The Triton kernels (fp32 under the interpreter, chunk 16: starts inside the first chunk
    and at its edge) against the float64 documents alone. fp32 tolerance 1e-5 on the logits and
    on all parameter gradients together (single fp32 gradients of the gate biases are sums that
    cancel, tests/context_parallel/test_model_context_parallel.py explains)."""
    model64 = _model(name, chunk_size=16)
    _, alone = _packed_and_alone(model64)
    model32 = _model(name, chunk_size=16, kernel_backend="triton").float()
    ids, weight = _inputs(model32.cfg.vocab_size)
    logits = model32(ids, document_starts=_starts())
    (logits.double() * weight).sum().backward()
    scale = alone[0].abs().max()
    assert ((logits.detach().double() - alone[0]).abs().max() / scale).item() <= 1e-5
    diff = sum(((p.grad.double() - alone[1][n]) ** 2).sum() for n, p in model32.named_parameters())
    norm = sum((g ** 2).sum() for g in alone[1].values())
    assert (diff / norm).sqrt().item() <= 1e-5


def test_document_layout_facts():
    layout = DocumentLayout(_starts(), 2, S, None, 4, "cpu")
    assert layout.since_start[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 0, 0, 1, 2, 3, 4, 5] + list(range(7))
    assert layout.to_end[0, :10].tolist() == [4, 3, 2, 1, 0, 2, 1, 0, 0, 0]
    resets = layout.block_resets()
    assert torch.equal(resets.forward.state, _starts())
    ends = torch.cat([_starts()[:, 1:], torch.ones(2, 1, dtype=torch.bool)], dim=1)
    assert torch.equal(resets.reverse.state, ends.flip(1))
    # the conv input 2 steps back is visible at t only inside t's document
    assert resets.forward.conv_visible[2][0, :8].tolist() == [False, False, True, True, True, False, False, True]


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(2, S, dtype=torch.long), "dtype torch.bool"),
    (torch.zeros(2, S + 1, dtype=torch.bool), r"document_starts: expected shape \(B, S\) = \(2, 23\)"),
    ([True] * S, "bool tensor"),
])
def test_bad_document_starts_are_one_clear_error(bad, message):
    model = _model("causal_mlstm_slstm")
    with pytest.raises(ModelInputError, match=message):
        model(_inputs(12)[0], document_starts=bad)
