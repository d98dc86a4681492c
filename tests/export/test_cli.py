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
    assert err.startswith("error: ") and "'1'" in err and len(err.strip().splitlines()) == 1
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
