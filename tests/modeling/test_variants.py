"""Bio-xLSTM variants: causality, bidirectional receptive field, RC equivariance/invariance."""
import pytest
import torch

from modeling import build_model
from modeling.dna_rc import (
    complement_table, reverse_complement_ids, reverse_complement_logits,
)
from tests.modeling.helpers import rel_err, tiny


def dna_ids(B, S):
    return torch.randint(7, 12, (B, S))      # A C G T N


def test_complement_map_matches_dna_vocab():
    table = complement_table(16).tolist()
    assert table[7:12] == [10, 9, 8, 7, 11]                   # A<->T, C<->G, N->N
    assert table[:7] == list(range(7)) and table[12:] == list(range(12, 16))
    ids = torch.tensor([[7, 8, 9, 10, 11, 4]])               # A C G T N [PAD]
    assert reverse_complement_ids(ids, 16).tolist() == [[4, 11, 7, 8, 9, 10]]


def changed_positions(model, ids, at):
    other = ids.clone()
    other[:, at] = 7 + (other[:, at] - 7 + 1) % 4
    diff = (model(ids) - model(other)).abs().amax(dim=(0, 2))
    return diff > 1e-6


@pytest.mark.parametrize("fields", [dict(), dict(slstm_positions=[1]),
                                    dict(position_encoding="rope_inner")])
def test_causal_model_never_looks_left(fields):
    model = build_model(tiny(num_blocks=3, **fields))
    changed = changed_positions(model, dna_ids(2, 12), at=6)
    assert not changed[:6].any()
    assert changed[6:].all()


@pytest.mark.parametrize("fields", [dict(bidirectional="weight_tied", head="mlm"),
                                    dict(bidirectional="alternating", head="mlm"),
                                    dict(bidirectional="weight_tied", head="mlm", slstm_positions=[0]),
                                    dict(rc_mode="param_sharing", head="mlm")])
def test_bidirectional_model_sees_both_sides(fields):
    model = build_model(tiny(num_blocks=2, **fields))
    changed = changed_positions(model, dna_ids(2, 12), at=6)
    assert changed[:6].any() and changed[7:].any()
    assert changed.all()


@pytest.mark.parametrize("fields", [dict(), dict(tie_embeddings=False),
                                    dict(slstm_positions=[1], num_blocks=3),
                                    dict(position_encoding="rope_inner")])
def test_param_sharing_model_is_rc_equivariant(fields):
    model = build_model(tiny(rc_mode="param_sharing", head="mlm", **fields))
    ids = dna_ids(3, 13)
    ids[0, -2:] = 4                                           # padding is complemented to itself
    out = model(ids)
    out_rc = model(reverse_complement_ids(ids, 16))
    assert rel_err(out_rc, reverse_complement_logits(out)) <= 1e-5
    hidden = model(ids, return_hidden=True)
    hidden_rc = model(reverse_complement_ids(ids, 16), return_hidden=True)
    assert rel_err(hidden_rc, hidden.flip(1).flip(-1)) <= 1e-5


def test_plain_bidirectional_model_is_not_rc_equivariant():
    # the test above can fail: an unconstrained model breaks the symmetry
    model = build_model(tiny(bidirectional="weight_tied", head="mlm"))
    ids = dna_ids(2, 13)
    out_rc = model(reverse_complement_ids(ids, 16))
    assert rel_err(out_rc, reverse_complement_logits(model(ids))) > 1e-2


def test_post_hoc_conjoined_model_is_rc_invariant():
    model = build_model(tiny(rc_mode="post_hoc", head="mlm", bidirectional="alternating"))
    ids = dna_ids(3, 13)
    rc = reverse_complement_ids(ids, 16)
    # predictions: the same per strand position; pooled embedding: identical
    assert rel_err(model(rc), reverse_complement_logits(model(ids))) <= 1e-5
    pooled = model(ids, return_hidden=True).mean(1)
    pooled_rc = model(rc, return_hidden=True).mean(1)
    assert rel_err(pooled_rc, pooled) <= 1e-5


def test_param_sharing_gradients_flow_to_shared_halves():
    model = build_model(tiny(rc_mode="param_sharing", head="mlm"))
    model(dna_ids(2, 9)).square().mean().backward()
    assert model.embedding.half_weight.grad.abs().sum() > 0
    assert model.final_norm.half_weight.grad.abs().sum() > 0


def test_context_parallel_refused_where_state_cannot_be_passed():
    from modeling import ContextParallelError
    from modeling.slstm_block import SLSTMBlock

    with pytest.raises(ContextParallelError, match="slstm_positions"):
        SLSTMBlock(tiny())(torch.randn(1, 4, 16), cp_group=object())
    model = build_model(tiny(rc_mode="post_hoc", head="mlm", bidirectional="alternating"))
    with pytest.raises(ContextParallelError, match="post_hoc"):
        model(dna_ids(1, 8), cp_group=object())
