"""The model options that reproduce the papers' official models (DESIGN.md sections 8, 11), and
that configs saved before they existed keep their former meaning."""
import dataclasses

import pytest
import torch

from modeling import ModelConfig, build_model
from modeling.directions import CausalBlock, ReversedBlock, WeightTiedBidirectionalBlock
from tests.modeling.helpers import rel_err, tiny


def randomized(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def dna_ids(B=2, S=11):
    return torch.randint(7, 12, (B, S))


def test_config_saved_before_the_options_keeps_its_meaning():
    old = dict(vocab_size=16, d_model=20, num_blocks=2, num_heads=2, proj_factor=1.31, qk_block_size=2,
               slstm_positions=[1], slstm_num_heads=2, bidirectional="alternating", head="mlm",
               position_encoding="rope_inner")
    cfg = ModelConfig.from_dict(old)
    assert cfg.inner_dim == 26 and cfg.ffn_dim == 64                 # round(26.2); 64*ceil(26/64)
    assert (cfg.gates_after_rope, cfg.mlstm_bias, cfg.norm_weight_offset) == (False, False, False)
    assert (cfg.bidirectional_residual, cfg.reversed_blocks, cfg.reversed_positions) == ("branch", "odd", "own")
    assert cfg.slstm_gate_layout == "full"
    names = set(build_model(cfg).state_dict())
    assert "blocks.1.inner.gate_if.weight" in names and not any(n.endswith(".bias") and "proj" in n for n in names)


@pytest.mark.parametrize("rounding,multiple,inner", [("up", 64, 128), ("down", 64, 64), ("nearest", 1, 96)])
def test_up_projection_rounding(rounding, multiple, inner):
    cfg = ModelConfig(d_model=48, num_heads=2, proj_multiple_of=multiple, proj_rounding=rounding)
    assert cfg.inner_dim == inner
    assert build_model(cfg).blocks[0].inner.proj_up.weight.shape == (2 * inner, 48)


def test_rounding_to_zero_width_is_refused():
    from modeling import ModelConfigError

    with pytest.raises(ModelConfigError, match="inner dim"):
        ModelConfig(d_model=16, proj_factor=1.0, proj_multiple_of=64, proj_rounding="down")


def test_gates_after_rope_matters_only_with_rope():
    ids = torch.randint(0, 16, (2, 9))
    for pe, same in (("none", True), ("rope_inner", False), ("rope_head", False)):
        torch.manual_seed(3)
        before = randomized(build_model(tiny(position_encoding=pe)))
        after = build_model(tiny(position_encoding=pe, gates_after_rope=True))
        after.load_state_dict(before.state_dict())
        assert (rel_err(after(ids), before(ids)) < 1e-7) == same, pe


def test_whole_block_bidirectional_adds_the_residual_once_more():
    inner = build_model(tiny(num_blocks=1)).blocks[0].inner
    x, pos = torch.randn(2, 7, 16), torch.arange(7).expand(2, 7)
    branch = WeightTiedBidirectionalBlock(inner)(x, pos, None, pos.flip(1))
    whole = WeightTiedBidirectionalBlock(inner, whole_block=True)(x, pos, None, pos.flip(1))
    assert torch.allclose(whole - branch, x, atol=1e-6)


@pytest.mark.parametrize("parity,reversed_indices", [("odd", [1, 3]), ("even", [0, 2])])
def test_alternating_parity_picks_the_reversed_blocks(parity, reversed_indices):
    model = build_model(tiny(num_blocks=4, bidirectional="alternating", head="mlm", reversed_blocks=parity))
    kinds = [type(b) for b in model.blocks]
    assert [i for i, k in enumerate(kinds) if k is ReversedBlock] == reversed_indices
    assert all(k in (ReversedBlock, CausalBlock) for k in kinds)


def test_reversed_positions_rule():
    # "flipped_index": the reversed pass sees 0..S-1 along the flipped sequence whatever the data
    # positions; "own": each token keeps its position id
    ids, pos = dna_ids(1, 8), torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])
    own = build_model(tiny(bidirectional="weight_tied", head="mlm"))
    flipped = build_model(tiny(bidirectional="weight_tied", head="mlm", reversed_positions="flipped_index"))
    layout = own._layout(ids, None, None)
    assert own._positions(pos, layout)[1].tolist() == [[3, 2, 1, 0, 3, 2, 1, 0]]
    assert flipped._positions(pos, layout)[1].tolist() == [list(range(8))]
    flipped.load_state_dict(randomized(own).state_dict())
    arange = torch.arange(8).expand(1, 8)
    assert rel_err(flipped(ids, position_ids=arange), own(ids, position_ids=arange)) > 1e-3


def test_headwise_slstm_gates_are_block_diagonal_full_gates():
    """The official per-head gate maps equal the full maps restricted to their head blocks, with
    i and f read from the conv activation and z and o from the normed input."""
    torch.manual_seed(1)
    headwise = randomized(build_model(tiny(slstm_positions=[0, 1], slstm_gate_layout="headwise")))
    full = build_model(tiny(slstm_positions=[0, 1]))
    state = {k: v for k, v in headwise.state_dict().items() if ".gate_" not in k}
    for b in range(2):
        g = lambda name: torch.block_diag(*headwise.state_dict()[f"blocks.{b}.inner.gate_{name}.weight"])  # noqa: E731
        state[f"blocks.{b}.inner.gate_if.weight"] = torch.cat([g("i"), g("f")])
        state[f"blocks.{b}.inner.gate_zo.weight"] = torch.cat([g("z"), g("o")])
    full.load_state_dict(state)
    ids = torch.randint(0, 16, (2, 9))
    assert rel_err(full(ids), headwise(ids)) <= 1e-6


def test_norm_weight_offset_is_a_reparameterisation():
    torch.manual_seed(2)
    plain = randomized(build_model(tiny(slstm_positions=[1])))
    offset = build_model(tiny(slstm_positions=[1], norm_weight_offset=True))
    norms = {k for k in plain.state_dict() if k.endswith("norm.weight")}
    offset.load_state_dict({k: v - 1 if k in norms else v for k, v in plain.state_dict().items()})
    ids = torch.randint(0, 16, (2, 9))
    assert len(norms) == 6 and rel_err(offset(ids), plain(ids)) <= 1e-6      # every norm of both block kinds


@pytest.mark.parametrize("fields", [dict(slstm_positions=[0, 1], bidirectional="weight_tied",
                                         bidirectional_residual="whole_block"),
                                    dict(position_encoding="rope_head")])
def test_param_sharing_halves_is_rc_equivariant(fields):
    from modeling.dna_rc import reverse_complement_ids, reverse_complement_logits

    model = randomized(build_model(tiny(vocab_size=12, rc_mode="param_sharing_halves", head="mlm", **fields)))
    ids = dna_ids(3, 10)
    rc = reverse_complement_ids(ids, 12)
    assert rel_err(model(rc), reverse_complement_logits(model(ids))) <= 1e-5
    hidden = model(ids, return_hidden=True)
    assert hidden.shape == (3, 10, 32)
    assert rel_err(model(rc, return_hidden=True), hidden.flip(1).flip(-1)) <= 1e-5


def test_rc_half_head_order_needs_an_rc_half_and_defaults_to_kept():
    from modeling import ModelConfigError

    assert ModelConfig.from_dict(dict(vocab_size=12, rc_mode="param_sharing_halves", head="mlm",
                                      slstm_positions=[0])).rc_half_slstm_head_order == "kept"
    with pytest.raises(ModelConfigError,
                       match="rc_half_slstm_head_order='reversed' applies to rc_mode=param_sharing_halves"):
        tiny(rc_half_slstm_head_order="reversed")
    with pytest.raises(ModelConfigError, match="rc_half_slstm_head_order must be one of"):
        tiny(vocab_size=12, rc_mode="param_sharing_halves", head="mlm", rc_half_slstm_head_order="flipped")
    # without sLSTM blocks the option changes nothing, and the architecture says so
    mlstm_only = tiny(vocab_size=12, rc_mode="param_sharing_halves", head="mlm")
    assert mlstm_only.architecture_dict() == dataclasses.replace(
        mlstm_only, rc_half_slstm_head_order="reversed").architecture_dict()


def test_architecture_dict_ignores_what_does_not_apply():
    base = tiny(position_encoding="none")
    assert base.architecture_dict() == dataclasses.replace(base, rope_theta=1.0, slstm_gate_layout="headwise",
                                                    reversed_blocks="even", chunk_size=8).architecture_dict()
    assert base.architecture_dict() != dataclasses.replace(base, mlstm_bias=True).architecture_dict()
