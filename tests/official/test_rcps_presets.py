"""The paper's RC-PS sLSTM presets against a float64 implementation of the official forward
(tests/official/official_reference.py, RC half with the official is_rc_flipped head flip), and
the equivariant variant of the same model (heads kept in order) against RC equivariance."""
import pytest
import torch

from modeling import build_model, load_model_config
from modeling.dna_rc import reverse_complement_ids, reverse_complement_logits
from pretrain.official.keys import weights_to_official
from tests.official import official_reference as ref
from tests.official.helpers import rel_err


def random_model(name, seed=0):
    """The preset in float64 with fresh random weights (every tensor moved off its init)."""
    cfg = load_model_config(name)
    model = build_model(cfg).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return cfg, model.eval()


def dna_ids(seed=5, S=9):
    return torch.randint(7, 12, (2, S), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size", ["500k", "2m"])
def test_paper_rcps_slstm_preset_gives_the_official_logits(size):
    cfg, model = random_model(f"dna_xlstm_{size}_mlm_rcps_slstm")
    assert cfg.rc_half_slstm_head_order == "reversed"
    spec = dict(kinds=["s"] * cfg.num_blocks, slstm_heads=cfg.slstm_num_heads, bidirectional="weight_tied",
                rcps=True)
    official = weights_to_official(model.state_dict(), cfg)
    ids = dna_ids()
    with torch.no_grad():
        ours = model(ids)
    expected = ref.forward(official, spec, ids)
    assert rel_err(ours, expected) <= 1e-10
    # the head flip matters: the same weights with the heads kept are another model
    cfg.rc_half_slstm_head_order = "kept"
    with torch.no_grad():
        assert rel_err(model(ids), expected) > 0.05


@pytest.mark.parametrize("size", ["500k", "2m"])
def test_equivariant_rcps_slstm_preset_is_rc_equivariant(size):
    cfg, model = random_model(f"dna_xlstm_{size}_mlm_rcps_slstm_equivariant", seed=1)
    assert cfg.rc_half_slstm_head_order == "kept"
    ids = dna_ids(6)
    rc_ids = reverse_complement_ids(ids, cfg.vocab_size)
    with torch.no_grad():
        logits, rc_logits = model(ids), model(rc_ids)
        hidden, rc_hidden = model(ids, return_hidden=True), model(rc_ids, return_hidden=True)
    assert rel_err(rc_logits, reverse_complement_logits(logits)) <= 1e-12
    assert rel_err(rc_hidden, hidden.flip(1).flip(-1)) <= 1e-12
    # and the official head order is not equivariant (so the check above can fail)
    cfg.rc_half_slstm_head_order = "reversed"
    with torch.no_grad():
        assert rel_err(model(rc_ids), reverse_complement_logits(model(ids))) > 0.05


def test_both_presets_have_the_same_weights():
    official, equivariant = (load_model_config(f"dna_xlstm_500k_mlm_{n}") for n in ("rcps_slstm", "rcps_slstm_equivariant"))
    with torch.device("meta"):
        shapes = [{k: v.shape for k, v in build_model(c).state_dict().items()} for c in (official, equivariant)]
    assert shapes[0] == shapes[1]
    differ = {k for k, v in official.architecture_dict().items() if equivariant.architecture_dict()[k] != v}
    assert differ == {"rc_half_slstm_head_order"}
