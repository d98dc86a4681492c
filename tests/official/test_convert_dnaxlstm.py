"""DNA-xLSTM checkpoints (DESIGN.md sections 8, 11): Lightning .ckpt -> export -> the logits of a
float64 implementation of the official forward (causal, weight-tied and alternating
bidirectional, mLSTM + sLSTM, RC parameter sharing), and back to byte-identical tensors."""
import dataclasses
import json

import pytest
import torch

from pretrain.errors import ConversionError
from pretrain.official.convert import convert_official, export_official
from tests.official import official_reference as ref
from tests.official.helpers import assert_byte_identical, converted_logits, rel_err

D, HEADS, SLSTM_HEADS, VOCAB, S = 48, 2, 4, 12, 13
INNER = ref.inner_dim(D, 2.0, 64, up=False)          # 96 rounded down to 64
FF = ref.inner_dim(D, 1.3, 8, up=False)              # 62.4 rounded down to 56
VARIANTS = {   # name: (block kinds, official config overrides, reference spec)
    "clm": ("mm", dict(), dict()),
    "weight_tied": ("mm", dict(bidirectional=True), dict(bidirectional="weight_tied")),
    "alternating": ("mmm", dict(bidirectional=True, bidirectional_alternating=True),
                    dict(bidirectional="alternating")),
    "mlstm_slstm": ("ms", dict(bidirectional=True, s_lstm_at=[1]), dict(bidirectional="weight_tied")),
    "rcps_slstm": ("ss", dict(bidirectional=True, rcps=True, s_lstm_at=[0, 1]),
                   dict(bidirectional="weight_tied", rcps=True)),
}


def official_config(kinds, **overrides):
    config = {"_target_": "models.dna_xlstm.modelling_xlstm.xLSTMConfig", "d_model": D, "n_layer": len(kinds),
              "tie_weights": False, "max_length": 1024, "vocab_size": VOCAB, "pad_vocab_size_multiple": 8,
              "m_conv1d_kernel_size": 4, "m_conv1d_causal": True, "m_qkv_proj_blocksize": 4,
              "m_num_heads": HEADS, "m_proj_factor": 2.0, "m_backend": "chunkwise", "m_chunk_size": 1024,
              "m_position_embeddings": True, "m_bias": True, "s_num_heads": SLSTM_HEADS,
              "s_conv1d_kernel_size": 4, "s_conv1d_causal": True, "s_lstm_at": [],
              "s_proj_factor": 1.3, "s_round_proj_up_dim_up": False, "s_round_proj_up_to_multiple_of": 8,
              "s_position_embeddings": False, "dropout": 0.0, "bidirectional": False,
              "bidirectional_alternating": False, "m_backend_bidirectional": False, "rcps": False,
              "complement_map": dict(enumerate(ref.COMPLEMENT[:VOCAB]))}
    config.update(overrides)
    return config


def official_state(kinds, seed=0, rcps=False):
    g = torch.Generator().manual_seed(seed)
    blocks = [ref.mlstm_block_tensors(g, D, INNER, HEADS, 4, 4, bias=True) if kind == "m"
              else ref.slstm_block_tensors(g, D, SLSTM_HEADS, FF, 4) for kind in kinds]
    return ref.model_tensors(g, VOCAB, D, blocks, rcps=rcps)


def write_ckpt(path, state, config, dtype=torch.float64, hyper_parameters=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.8.6",
            "state_dict": {"model.backbone." + k: (v.to(dtype) if v.is_floating_point() else v)
                           for k, v in state.items()}}
    if hyper_parameters:
        ckpt["hyper_parameters"] = {"model": {"_name_": "xlstm_lm", "config": config}, "dataset": {"mlm": True}}
    torch.save(ckpt, path)
    return path


def dna_ids(seed=4):
    return torch.randint(7, 12, (2, S), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_converted_dna_xlstm_gives_the_official_logits(tmp_path, variant):
    kinds, overrides, spec = VARIANTS[variant]
    spec = dict(spec, kinds=list(kinds), heads=HEADS, slstm_heads=SLSTM_HEADS, rope="head", theta=5e5)
    state = official_state(kinds, rcps=spec.get("rcps", False))
    src = write_ckpt(tmp_path / "run" / "last.ckpt", state, official_config(kinds, **overrides))
    out = convert_official("dnaxlstm", src, tmp_path / "export")
    ids = dna_ids()
    logits, _ = converted_logits(out, ids)
    assert rel_err(logits, ref.forward(state, spec, ids)) <= 1e-10


def test_project_bidirectional_forms_would_be_other_models(tmp_path):
    # the comparison above can fail: branch residual, odd blocks reversed or own positions differ
    from modeling import ModelConfig, build_model
    from safetensors.torch import load_file

    for kinds, overrides, change in (("mm", dict(bidirectional=True), dict(bidirectional_residual="branch")),
                                     ("mm", dict(bidirectional=True), dict(reversed_positions="own")),
                                     ("mmm", dict(bidirectional=True, bidirectional_alternating=True),
                                      dict(reversed_blocks="odd"))):
        state = official_state(kinds)
        out = convert_official("dnaxlstm", write_ckpt(tmp_path / "c.ckpt", state, official_config(kinds, **overrides)),
                               tmp_path / "e", force=True)
        cfg = {**json.loads((out / "config.json").read_text()), **change, "kernel_backend": "reference"}
        model = build_model(ModelConfig.from_dict(cfg)).double()
        model.load_state_dict(load_file(str(out / "model.safetensors")))
        spec = dict(kinds=list(kinds), heads=HEADS, rope="head", theta=5e5,
                    bidirectional="alternating" if overrides.get("bidirectional_alternating") else "weight_tied")
        ids = dna_ids()
        assert rel_err(model(ids), ref.forward(state, spec, ids)) > 1e-3, change


def test_official_rc_parameter_sharing_is_not_rc_equivariant_and_the_kept_head_order_is(tmp_path):
    # the official RC half reverses the sLSTM heads (is_rc_flipped), which breaks equivariance;
    # the same weights with the heads kept give an exactly RC-equivariant model
    from modeling.dna_rc import reverse_complement_ids, reverse_complement_logits

    state = official_state("ss", rcps=True)
    config = official_config("ss", bidirectional=True, rcps=True, s_lstm_at=[0, 1])
    out = convert_official("dnaxlstm", write_ckpt(tmp_path / "c.ckpt", state, config), tmp_path / "e")
    assert json.loads((out / "config.json").read_text())["rc_half_slstm_head_order"] == "reversed"
    ids = dna_ids()
    rc_ids = reverse_complement_ids(ids, VOCAB)
    logits, model = converted_logits(out, ids)
    assert rel_err(converted_logits(out, rc_ids)[0], reverse_complement_logits(logits)) > 0.05
    assert model.model(ids, return_hidden=True).shape[-1] == 2 * D      # [forward half | RC half]
    model.config.rc_half_slstm_head_order = "kept"
    with torch.no_grad():
        kept, kept_rc = model.model(ids), model.model(rc_ids)
    assert rel_err(kept_rc, reverse_complement_logits(kept)) <= 1e-12
    assert rel_err(kept, logits) > 0.05


@pytest.mark.parametrize("variant", ["mlstm_slstm", "rcps_slstm"])
def test_round_trip_writes_byte_identical_tensors(tmp_path, variant):
    kinds, overrides, spec = VARIANTS[variant]
    state = official_state(kinds, seed=2, rcps=spec.get("rcps", False))
    src = write_ckpt(tmp_path / "last.ckpt", state, official_config(kinds, **overrides), dtype=torch.float32)
    out = convert_official("dnaxlstm", src, tmp_path / "export")
    back = export_official(out, tmp_path / "back", "dnaxlstm")
    written = torch.load(back / "checkpoints" / "last.ckpt", weights_only=True)
    assert_byte_identical(written["state_dict"], torch.load(src, weights_only=True)["state_dict"])
    assert json.loads((back / "model_config.json").read_text()) == written["hyper_parameters"]["model"]
    again = convert_official("dnaxlstm", back / "checkpoints" / "last.ckpt", tmp_path / "again")
    assert json.loads((again / "config.json").read_text()) == json.loads((out / "config.json").read_text())


def test_checkpoint_without_hyper_parameters_takes_model_config_json(tmp_path):
    state = official_state("mm")
    src = write_ckpt(tmp_path / "last.ckpt", state, None, hyper_parameters=False)
    with pytest.raises(ConversionError, match="--model-config"):
        convert_official("dnaxlstm", src, tmp_path / "export")
    config_json = tmp_path / "model_config.json"
    config_json.write_text(json.dumps({"_name_": "xlstm_lm", "config": official_config("mm")}))
    out = convert_official("dnaxlstm", src, tmp_path / "export", model_config_path=str(config_json))
    ids = dna_ids()
    spec = dict(kinds=["m", "m"], heads=HEADS, rope="head", theta=5e5)
    assert rel_err(converted_logits(out, ids)[0], ref.forward(state, spec, ids)) <= 1e-10


class NotPlainData:
    """Stands for any class a checkpoint may pickle that is neither plain data nor omegaconf."""


@pytest.mark.parametrize("kinds,overrides,needle", [
    ("mm", dict(m_backend_bidirectional=True), "m_backend_bidirectional=True"),
    ("mm", dict(m_conv1d_causal=False), "m_conv1d_causal=False"),
    ("ss", dict(s_position_embeddings=True, s_lstm_at=[0, 1]), "s_position_embeddings=True"),
    ("mm", dict(rcps=True, bidirectional=True), "rcps=True with mLSTM blocks"),
    ("mm", dict(bidirectional_alternating=True), "bidirectional_alternating=True without"),
    ("ms", dict(s_lstm_at=[1], s_conv1d_kernel_size=3), "one conv_kernel_size"),
    ("mm", dict(vocab_size=20), "vocab_size=20"),
    ("mm", dict(new_option=True), r"\['new_option'\]"),
])
def test_unsupported_official_config_is_refused_by_name(tmp_path, kinds, overrides, needle):
    src = write_ckpt(tmp_path / "last.ckpt", official_state(kinds), official_config(kinds, **overrides))
    with pytest.raises(ConversionError, match=needle):
        convert_official("dnaxlstm", src, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_checkpoint_with_python_objects_is_refused_in_one_line(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": NotPlainData()}, path)
    with pytest.raises(ConversionError,
                       match=r"needs the Python global .*\.NotPlainData, which is not plain data") as info:
        convert_official("dnaxlstm", path, tmp_path / "export")
    assert "\n" not in str(info.value)


def test_wrong_complement_buffer_is_refused(tmp_path):
    state = official_state("ss", rcps=True)
    state["lm_head.complement_map"] = torch.arange(VOCAB)
    config = official_config("ss", bidirectional=True, rcps=True, s_lstm_at=[0, 1])
    with pytest.raises(ConversionError, match="lm_head.complement_map is not the DNA complement map"):
        convert_official("dnaxlstm", write_ckpt(tmp_path / "c.ckpt", state, config), tmp_path / "e")


def test_project_only_designs_are_refused_for_the_official_format(tmp_path):
    from modeling import ModelConfig
    from pretrain.official.convert import check_representable

    cfg = ModelConfig(vocab_size=16, d_model=32, num_blocks=2, num_heads=2, rc_mode="param_sharing",
                      head="mlm", position_encoding="rope_head")
    with pytest.raises(ConversionError, match="rc_mode='param_sharing' has no DNA-xLSTM counterpart"):
        check_representable(cfg, "dnaxlstm")
    branch = ModelConfig(vocab_size=12, d_model=48, num_blocks=2, num_heads=2, bidirectional="weight_tied",
                         head="mlm", position_encoding="rope_head", proj_multiple_of=64, proj_rounding="down")
    with pytest.raises(ConversionError, match="bidirectional_residual='branch'"):
        check_representable(branch, "dnaxlstm")
    rc_kept = ModelConfig(vocab_size=12, d_model=48, num_blocks=2, slstm_positions=[0, 1],
                          slstm_gate_layout="headwise", rc_mode="param_sharing_halves", head="mlm",
                          bidirectional="weight_tied", bidirectional_residual="whole_block",
                          reversed_positions="flipped_index", ffn_multiple_of=8, ffn_rounding="down",
                          norm_weight_offset=True)
    with pytest.raises(ConversionError, match="rc_half_slstm_head_order='kept' .*has 'reversed'"):
        check_representable(rc_kept, "dnaxlstm")
    check_representable(dataclasses.replace(rc_kept, rc_half_slstm_head_order="reversed"), "dnaxlstm")
