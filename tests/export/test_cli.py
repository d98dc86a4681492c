"""`bioxlstm score | embed | generate | infill` on a real export, through the console entry point,
and `--help` texts that document every option."""
import csv

import numpy as np
import pytest

from launchers.main import main
from pretrain.export import CheckpointSource, export_checkpoint, resolve_checkpoint_dir


@pytest.fixture(scope="module")
def protein_export(zero3_run, protein_tokenizer, tmp_path_factory):
    run_dir, config, _ = zero3_run
    out = tmp_path_factory.mktemp("cli") / "export"
    export_checkpoint(CheckpointSource(resolve_checkpoint_dir(run_dir), config, protein_tokenizer), out)
    return out


@pytest.fixture
def fasta(tmp_path):
    path = tmp_path / "proteins.fasta"
    path.write_text(">p1 first\nMKTAYIAKQR\nQISFVK\n>p2\nMKSAYLAK\n>p3\nLLAGVSERTIDPKQ\n")
    return path


def test_score_writes_one_csv_row_per_sequence(protein_export, fasta, tmp_path):
    out = tmp_path / "scores.csv"
    assert main(["score", str(protein_export), str(fasta), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["name"] for r in rows] == ["p1", "p2", "p3"]
    assert [int(r["num_tokens"]) for r in rows] == [16, 8, 14]
    assert all(float(r["log_likelihood"]) < 0 and float(r["perplexity"]) > 1 for r in rows)


def test_embed_writes_pooled_npy_names_and_per_token_npz(protein_export, fasta, tmp_path):
    out, per_token = tmp_path / "emb.npy", tmp_path / "tokens.npz"
    assert main(["embed", str(protein_export), str(fasta), "--out", str(out), "--per-token", str(per_token)]) == 0
    pooled = np.load(out)
    assert pooled.shape[0] == 3 and pooled.dtype == np.float32 and np.isfinite(pooled).all()
    assert (tmp_path / "emb.names.txt").read_text().split() == ["p1", "p2", "p3"]
    arrays = np.load(per_token)
    assert arrays["p1"].shape == (16, pooled.shape[1])
    assert np.allclose(arrays["p2"].mean(0), pooled[1], rtol=1e-5, atol=1e-6)


def test_generate_with_homolog_context_writes_fasta(protein_export, fasta, tmp_path):
    out = tmp_path / "gen.fasta"
    assert main(["generate", str(protein_export), "--context", str(fasta), "--num", "2", "--max-new-tokens", "20",
                 "--top-p", "0.9", "--seed", "1", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == ">generated_0" and lines[2] == ">generated_1" and len(lines) == 4


def test_infill_fills_every_masked_span(protein_export, fasta, tmp_path):
    masked = tmp_path / "masked.fasta"
    masked.write_text(">q1\nMKT??IAKQ?\n")
    out = tmp_path / "filled.fasta"
    assert main(["infill", str(protein_export), str(masked), "--context", str(fasta), "--out", str(out),
                 "--max-span-tokens", "4", "--seed", "2"]) == 0
    name, sequence = out.read_text().splitlines()
    assert name == ">q1" and "?" not in sequence and sequence.startswith("MKT")


def test_bad_input_is_one_user_facing_line(protein_export, tmp_path, capsys):
    bad = tmp_path / "bad.fasta"
    bad.write_text(">x\nMKT1AY\n")
    assert main(["score", str(protein_export), str(bad), "--out", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'1'" in err and "bad.fasta record 'x'" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["score", str(tmp_path / "nothing"), str(bad), "--out", str(tmp_path / "s.csv")]) == 2
    assert "export directory" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["export", "score", "embed", "generate", "infill"])
def test_help_explains_every_option(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in {"export": ["--dtype", "--force", "CKPT_DIR"], "score": ["--out", "--batch-size"],
                   "embed": ["--per-token"], "generate": ["--context", "--top-k", "--top-p", "--temperature", "--seed"],
                   "infill": ["--max-span-tokens", "MASKED"]}[command]:
        assert option in text


def test_export_command_writes_the_four_files_and_a_model_card(zero3_run, tmp_path):
    import json

    from data_pipeline.tokenizers import ProteinTokenizer
    from deepspeed_checkpoint import VAL_LOSS

    run_dir, config, _ = zero3_run
    out = tmp_path / "exported"
    assert main(["export", str(run_dir), str(out), "--dtype", "bf16"]) == 0
    assert json.loads((out / "config.json").read_text()) == config
    assert json.loads((out / "tokenizer.json").read_text()) == ProteinTokenizer().to_dict()
    card = (out / "README.md").read_text()
    for fact in ("protein", "| tokens trained | 192 |", f"| validation loss | {VAL_LOSS} |",
                 "stage 2 of 2 (context 128)", "feedc0ffee", "step_00000003", "| weights dtype | bf16 |",
                 "| optimizer steps | 3 |"):
        assert fact in card, fact


def test_export_command_refuses_a_damaged_checkpoint_in_one_line(zero3_copy, tmp_path, capsys):
    run_dir, _, _ = zero3_copy
    tag_dir = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    shard = sorted(tag_dir.glob("*optim_states.pt"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF                     # one flipped byte, same size
    shard.write_bytes(bytes(data))
    out = tmp_path / "exported"
    assert main(["export", str(run_dir), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and shard.name in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_export_without_the_data_build_asks_for_the_tokenizer(zero3_copy, tmp_path, capsys):
    import yaml

    run_dir, _, _ = zero3_copy
    config_path = run_dir / "config.yaml"
    resolved = yaml.safe_load(config_path.read_text())
    resolved["data"]["shards"] = str(tmp_path / "moved_away")
    config_path.write_text(yaml.safe_dump(resolved))
    assert main(["export", str(run_dir), str(tmp_path / "a")]) == 2
    assert "--tokenizer" in capsys.readouterr().err
    tokenizer = tmp_path / "tokenizer.json"
    from data_pipeline.tokenizers import ProteinTokenizer

    ProteinTokenizer().save(tokenizer)
    assert main(["export", str(run_dir), str(tmp_path / "b"), "--tokenizer", str(tokenizer)]) == 0
    assert (tmp_path / "b" / "model.safetensors").is_file()


def _export_dir_of_fresh_model(modality: str, path, **overrides):
    """An export directory (the 4-file format) of a freshly initialised real model."""
    import json

    import torch
    from safetensors.torch import save_file

    from modeling import ModelConfig, build_model
    from tiny_models import tiny_model_config, tokenizer_dict

    torch.manual_seed(11)
    config = tiny_model_config(modality, **overrides)
    model = build_model(ModelConfig.from_dict(config))
    path.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(config))
    (path / "tokenizer.json").write_text(json.dumps(tokenizer_dict(modality)))
    return path


def test_generate_molecules_from_a_domain_reports_rdkit_metrics(tmp_path, capsys):
    export = _export_dir_of_fresh_model("molecules", tmp_path / "chem")
    domain = tmp_path / "domain.smi"
    domain.write_text("smiles\nCCO\nc1ccccc1O\nCC(=O)Nc1ccc(O)cc1\n")
    out = tmp_path / "gen.csv"
    assert main(["generate", str(export), "--context", str(domain), "--num", "5", "--max-new-tokens", "12",
                 "--seed", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "validity" in printed and "uniqueness" in printed and "novelty" in printed
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 5 and all(r["valid"] in ("0", "1") for r in rows)


def test_generate_dna_continues_the_prompt(tmp_path):
    export = _export_dir_of_fresh_model("dna", tmp_path / "dna")
    out = tmp_path / "gen.fasta"
    assert main(["generate", str(export), "--prompt", "ACGTAC", "--num", "2", "--max-new-tokens", "30",
                 "--out", str(out)]) == 0
    sequences = out.read_text().splitlines()[1::2]
    assert len(sequences) == 2 and all(s.startswith("ACGTAC") and len(s) == 36 for s in sequences)
    assert set("".join(sequences)) <= set("ACGTN")


def test_masked_lm_dna_model_scores_by_pseudo_likelihood_and_embeds_with_both_directions(tmp_path):
    import torch

    from modeling.inference import load

    export = _export_dir_of_fresh_model("dna", tmp_path / "mlm", head="mlm", bidirectional="weight_tied",
                                        slstm_positions=[])
    model = load(export)
    (score,) = model.score(["ACGTTGCA"])
    ids = model.tokenizer.encode("ACGTTGCA")
    expected = 0.0
    for position in range(len(ids)):
        masked = list(ids)
        masked[position] = model.tokenizer.mask_id
        with torch.no_grad():
            logits = model.model(torch.tensor([masked]))[0].double()
        expected += torch.log_softmax(logits[position], -1)[ids[position]].item()
    assert score.num_tokens == 8 and abs(score.log_likelihood - expected) <= 1e-5 * abs(expected)
    first = model.embed(["ACGTTGCA"])[0].per_token[0]
    changed_end = model.embed(["ACGTTGCC"])[0].per_token[0]
    assert not torch.allclose(first, changed_end)          # the first token sees the last one
    with pytest.raises(Exception, match="causal"):
        model.generate("ACGT", 5)
