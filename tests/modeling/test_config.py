"""ModelConfig: dict round trip, strict keys and types, validation, preset YAML files."""
from pathlib import Path

import pytest

from modeling import ModelConfig, ModelConfigError, build_model, load_model_config
from modeling.presets import MODEL_CONFIG_DIR


def test_round_trip_keeps_every_field():
    cfg = ModelConfig(d_model=96, num_heads=3, slstm_positions=[1], bidirectional="alternating",
                      head="mlm", position_encoding="rope_inner", rope_theta=1e4)
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()


def test_unknown_key_is_named():
    with pytest.raises(ModelConfigError, match="d_modle"):
        ModelConfig.from_dict({"d_modle": 128})


@pytest.mark.parametrize("key,value", [("d_model", "128"), ("tie_embeddings", 1),
                                       ("num_blocks", 2.5), ("slstm_positions", 3)])
def test_wrong_type_is_named(key, value):
    with pytest.raises(ModelConfigError, match=key):
        ModelConfig.from_dict({key: value})


def test_int_accepted_for_float():
    assert ModelConfig.from_dict({"rope_theta": 10000}).rope_theta == 10000.0


@pytest.mark.parametrize("fields,needle", [
    (dict(d_model=100, num_heads=3), "divisible by num_heads"),
    (dict(bidirectional="both"), "bidirectional"),
    (dict(rc_mode="flip"), "rc_mode"),
    (dict(slstm_positions=[7], num_blocks=4), "slstm_positions"),
    (dict(head="mlm"), "bidirectional"),
    (dict(bidirectional="weight_tied"), "head=lm"),
    (dict(rc_mode="param_sharing"), "head: mlm"),
    (dict(rc_mode="param_sharing", head="mlm", bidirectional="weight_tied"), "bidirectional: none"),
    (dict(num_blocks=0), "num_blocks"),
])
def test_validation_errors(fields, needle):
    with pytest.raises(ModelConfigError, match=needle):
        ModelConfig(**fields)


def test_errors_are_user_facing():
    assert ModelConfigError.user_facing is True


def test_every_preset_loads_and_builds_on_meta():
    import torch

    names = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.yaml"))
    assert {"prot_xlstm_26m", "prot_xlstm_102m", "chem_xlstm_15m", "chem_xlstm_1_6m",
            "dna_tiny", "protein_tiny", "molecules_tiny"} <= set(names)
    for name in names:
        with torch.device("meta"):
            build_model(load_model_config(name))


def test_bad_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("d_model: 64\nnum_head: 2\n")
    with pytest.raises(ModelConfigError, match=r"bad\.yaml.*num_head"):
        load_model_config(str(bad))
    with pytest.raises(ModelConfigError, match="presets"):
        load_model_config("no_such_model")
