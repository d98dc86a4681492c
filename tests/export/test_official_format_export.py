"""`bioxlstm export RUN OUT --format ...` from a real DeepSpeed run: the official layout holds the
trained weights (norms as offsets) and converts back to the model that was trained; a run whose
architecture the official code cannot express is refused, naming the field."""
import json

import pytest
import torch

from launchers.main import main


def test_zero2_run_exports_to_the_official_prot_xlstm_layout(protein_tokenizer, tmp_path):
    from deepspeed_checkpoint import probe_batch, write_checkpoint
    from tiny_models import tiny_model_config

    from modeling.inference import load

    config = tiny_model_config("protein", gates_after_rope=True, norm_weight_offset=True,
                               proj_multiple_of=64, proj_rounding="up", proj_factor=1.5)
    run_dir = tmp_path / "run"
    train_logits = write_checkpoint(run_dir, config, zero_stage=2, world_size=2, with_train_state=True)
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text(json.dumps(protein_tokenizer))
    official = tmp_path / "official"
    assert main(["export", str(run_dir), str(official), "--format", "protxlstm", "--tokenizer", str(tokenizer)]) == 0
    written = json.loads((official / "config.json").read_text())
    assert written["position_embeddings"] == "rot_1d" and written["mlstm_block"]["mlstm"]["_inner_embedding_dim"] == 64
    weights = torch.load(official / "pytorch_model.bin", weights_only=True)
    assert all(name.startswith("backbone.") for name in weights)
    assert main(["convert", "protxlstm", str(official), str(tmp_path / "back")]) == 0
    with torch.no_grad():
        logits = load(tmp_path / "back").model(probe_batch(config["vocab_size"])).float()
    assert (logits - train_logits).abs().max().item() <= 1e-6


def test_run_trained_with_gates_before_rope_is_refused_for_prot_xlstm(zero3_run, protein_tokenizer, tmp_path, capsys):
    run_dir, config, _ = zero3_run
    assert config["position_encoding"] == "rope_inner" and not config["gates_after_rope"]
    assert main(["export", str(run_dir), str(tmp_path / "official"), "--format", "protxlstm"]) == 2
    err = capsys.readouterr().err
    assert "model.gates_after_rope=False (the protxlstm format has True)" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "official").exists()


@pytest.mark.parametrize("family", ["dnaxlstm", "chemxlstm"])
def test_export_of_another_modality_is_refused(zero3_run, tmp_path, family, capsys):
    run_dir, _, _ = zero3_run
    assert main(["export", str(run_dir), str(tmp_path / "o"), "--format", family]) == 2
    assert "error:" in capsys.readouterr().err
