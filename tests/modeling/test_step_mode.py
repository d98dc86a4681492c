"""Full-sequence forward == one token at a time through model.step (fp32, relative <= 1e-5)."""
import pytest
import torch

from modeling import StepModeError, build_model
from tests.modeling.helpers import rel_err, tiny

VARIANTS = {
    "mlstm_rope_head": dict(),
    "mlstm_rope_inner": dict(position_encoding="rope_inner"),
    "mlstm_no_pe_1head": dict(position_encoding="none", num_heads=1),
    "slstm_only": dict(slstm_positions=[0, 1]),
    "mixed_stack": dict(num_blocks=3, slstm_positions=[1]),
    "tied_seq_index": dict(tie_embeddings=True, num_sequence_index=4, cls_token_id=0),
    # the official forms: Prot-xLSTM gates after RoPE; DNA-xLSTM biases, headwise sLSTM gates
    "official_prot": dict(position_encoding="rope_inner", gates_after_rope=True, norm_weight_offset=True,
                          proj_multiple_of=8, proj_rounding="up", proj_factor=1.3),
    "official_dna_mixed": dict(num_blocks=3, slstm_positions=[1], mlstm_bias=True, norm_weight_offset=True,
                               slstm_gate_layout="headwise", ffn_multiple_of=8, ffn_rounding="down"),
}


def run_steps(model, ids, position_ids=None):
    state = model.init_state(ids.shape[0])
    outs = []
    for t in range(ids.shape[1]):
        pos = None if position_ids is None else position_ids[:, t]
        logits, state = model.step(ids[:, t], state, position_ids=pos)
        outs.append(logits)
    return torch.stack(outs, dim=1), state


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_parallel_equals_recurrent(name):
    model = build_model(tiny(**VARIANTS[name]))
    ids = torch.randint(0, 16, (2, 11))        # 11: not a multiple of the chunk size 4
    full = model(ids)
    stepped, _ = run_steps(model, ids)
    assert rel_err(stepped, full) <= 1e-5


def test_given_positions_restart_and_clamp():
    model = build_model(tiny(position_encoding="rope_inner", max_position_id=5))
    ids = torch.randint(0, 16, (2, 12))
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7]] * 2)
    full = model(ids, position_ids=pos)
    stepped, _ = run_steps(model, ids, pos)
    assert rel_err(stepped, full) <= 1e-5
    # the clamp really applies: 6 and 7 act as 5
    clamped = model(ids, position_ids=pos.clamp(max=5))
    assert torch.equal(full, clamped)
    # and positions matter at all
    assert rel_err(model(ids), full) > 1e-4


def test_state_is_constant_size():
    model = build_model(tiny(num_blocks=3, slstm_positions=[2]))
    ids = torch.randint(0, 16, (1, 9))
    _, s5 = run_steps(model, ids[:, :5])
    _, s9 = run_steps(model, ids)
    shapes = lambda s: [{k: v.shape for k, v in b.items()} for b in s["blocks"]]
    assert shapes(s5) == shapes(s9)


@pytest.mark.parametrize("fields", [dict(bidirectional="weight_tied", head="mlm"),
                                    dict(bidirectional="alternating", head="mlm"),
                                    dict(rc_mode="param_sharing", head="mlm"),
                                    dict(rc_mode="post_hoc", head="mlm", bidirectional="alternating")])
def test_step_mode_refused_for_non_causal_models(fields):
    model = build_model(tiny(**fields))
    with pytest.raises(StepModeError, match="no recurrent step mode"):
        model.init_state(1)
