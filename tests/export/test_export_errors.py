"""A damaged checkpoint or an occupied output directory gets one clear, user-facing error and
nothing is written; --force replaces an old export only once the new one is complete."""
import os
from pathlib import Path

import pytest

from pretrain.export import CheckpointSource, ExportError, export_checkpoint, resolve_checkpoint_dir


def _source(run_dir, config, tokenizer):
    return CheckpointSource(resolve_checkpoint_dir(run_dir), config, tokenizer)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def _damage_truncate_shard(tag_dir: Path):
    shard = sorted(tag_dir.glob("*optim_states.pt"))[1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def _damage_remove_shard(tag_dir: Path):
    sorted(tag_dir.glob("*optim_states.pt"))[1].unlink()


def _damage_garbage_model_states(tag_dir: Path):
    sorted(tag_dir.glob("*model_states.pt"))[0].write_bytes(b"not a checkpoint")


@pytest.mark.parametrize("damage,phrase", [
    (_damage_truncate_shard, "corrupt or incomplete"),
    (_damage_remove_shard, "corrupt or incomplete"),
    (_damage_garbage_model_states, "corrupt or incomplete"),
], ids=["truncated-shard", "missing-shard", "garbage-model-states"])
def test_damaged_checkpoint_is_refused_and_nothing_is_written(zero3_copy, protein_tokenizer, tmp_path, damage, phrase):
    run_dir, config, _ = zero3_copy
    source = _source(run_dir, config, protein_tokenizer)
    damage(source.checkpoint_dir)
    out = tmp_path / "export"
    with pytest.raises(ExportError, match=phrase) as caught:
        export_checkpoint(source, out)
    assert caught.value.user_facing is True
    assert str(source.checkpoint_dir) in str(caught.value)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_latest_marker_naming_a_missing_checkpoint_is_refused(zero3_copy):
    run_dir, _, _ = zero3_copy
    (run_dir / "checkpoints" / "latest").write_text("step_999\n")
    with pytest.raises(ExportError, match="step_999"):
        resolve_checkpoint_dir(run_dir)


def test_directory_without_a_checkpoint_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="latest"):
        resolve_checkpoint_dir(tmp_path / "empty")
    with pytest.raises(ExportError, match="no such checkpoint"):
        resolve_checkpoint_dir(tmp_path / "missing")


def test_config_that_does_not_fit_the_weights_is_refused(zero3_copy, protein_tokenizer, tmp_path):
    from tiny_models import tiny_model_config

    run_dir, _, _ = zero3_copy
    wrong = tiny_model_config("protein", d_model=48)
    with pytest.raises(ExportError, match="do not match"):
        export_checkpoint(_source(run_dir, wrong, protein_tokenizer), tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_non_empty_out_dir_is_refused_without_force_and_replaced_with_it(zero3_copy, protein_tokenizer, tmp_path):
    run_dir, config, _ = zero3_copy
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="--force"):
        export_checkpoint(_source(run_dir, config, protein_tokenizer), out)
    assert os.listdir(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"

    export_checkpoint(_source(run_dir, config, protein_tokenizer), out, force=True)
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors", "tokenizer.json",
                                       "training.json"]
    assert _leftovers(tmp_path) == []


def test_empty_out_dir_is_used(zero3_copy, protein_tokenizer, tmp_path):
    run_dir, config, _ = zero3_copy
    out = tmp_path / "export"
    out.mkdir()
    export_checkpoint(_source(run_dir, config, protein_tokenizer), out)
    assert (out / "model.safetensors").is_file()


def test_unknown_dtype_is_refused(zero3_copy, protein_tokenizer, tmp_path):
    run_dir, config, _ = zero3_copy
    with pytest.raises(ExportError, match="fp16"):
        export_checkpoint(_source(run_dir, config, protein_tokenizer), tmp_path / "export", dtype="fp16")
