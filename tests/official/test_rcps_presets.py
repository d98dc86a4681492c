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
    official, equivariant = (load_model_config(f"dna_xlstm_500k_mlm_{name}")
                             for name in ("rcps_slstm", "rcps_slstm_equivariant"))
    with torch.device("meta"):
        shapes = [{k: v.shape for k, v in build_model(c).state_dict().items()} for c in (official, equivariant)]
    assert shapes[0] == shapes[1]
    differ = {k for k, v in official.architecture_dict().items() if equivariant.architecture_dict()[k] != v}
    assert differ == {"rc_half_slstm_head_order"}


def write_export_dir(path, cfg, model):
    """An export directory as `bioxlstm export` writes it (weights, config, tokenizer)."""
    import json

    from safetensors.torch import save_file

    from data_pipeline.tokenizers import DNATokenizer
    from pretrain.export import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE

    path.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / WEIGHTS_FILE))
    (path / CONFIG_FILE).write_text(json.dumps(cfg.to_dict()))
    (path / TOKENIZER_FILE).write_text(json.dumps(DNATokenizer().to_dict()))
    return path


def test_paper_rcps_preset_exports_to_the_official_config_and_logits(tmp_path):
    import json

    from pretrain.errors import ConversionError
    from pretrain.official.convert import export_official

    cfg, model = random_model("dna_xlstm_500k_mlm_rcps_slstm", seed=2)
    out = export_official(write_export_dir(tmp_path / "ours", cfg, model), tmp_path / "official", "dnaxlstm")
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    written = ckpt["hyper_parameters"]["model"]["config"]
    assert written == json.loads((out / "model_config.json").read_text())["config"]
    assert written["rcps"] is True and written["bidirectional"] is True and written["s_lstm_at"] == [0, 1, 2, 3]
    state = {k[len("model.backbone."):]: v for k, v in ckpt["state_dict"].items()}
    spec = dict(kinds=["s"] * written["n_layer"], slstm_heads=written["s_num_heads"], bidirectional="weight_tied",
                rcps=True)
    ids = dna_ids(7)
    with torch.no_grad():
        assert rel_err(model(ids), ref.forward(state, spec, ids)) <= 1e-10
    # the equivariant variant has no official counterpart: refused naming the option
    eq_cfg, eq_model = random_model("dna_xlstm_500k_mlm_rcps_slstm_equivariant")
    with pytest.raises(ConversionError,
                       match=r"model.rc_half_slstm_head_order='kept' \(the dnaxlstm format has 'reversed'\)"):
        export_official(write_export_dir(tmp_path / "eq", eq_cfg, eq_model), tmp_path / "eq_official", "dnaxlstm")
    assert not (tmp_path / "eq_official").exists()
