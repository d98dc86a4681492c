"""Engine options through the real trainer (1 rank, DeepSpeed on CPU): per-block activation
checkpointing recomputes exactly (same fp32 loss curve, bit for bit), bf16 tracks fp32 within
bf16 rounding, and a model whose vocabulary is smaller than the shards' tokenizer is refused."""
import pytest
import yaml

from trainer_processes import REPO, read_logs, run_ranks

from pretrain.metrics import read_metrics

STEPS = 4


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from data_pipeline.demo import build_demo_shards

    return build_demo_shards(tmp_path_factory.mktemp("engine_shards") / "molecules", "molecules")


def train(tmp_path, shards, name, *overrides, expect=0):
    path = tmp_path / name / "config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump({
        "model": {"base": str(REPO / "configs/models/molecules_tiny.yaml"), "vocab_size": 45},
        "data": {"modality": "molecules", "shards": str(shards), "num_workers": 1},
        "train": {"out_dir": str(path.parent / "run"), "lr": 3e-3, "zero_stage": 1, "dtype": "fp32",
                  "checkpoint_every": 0, "eval_every": 0, "eval_batches": 1, "progress": False},
        "curriculum": {"stages": [{"context_len": 128, "micro_batch_size": 4, "tokens": STEPS * 512}]},
    }))
    codes = run_ranks(1, ["--config", path, *overrides], path.parent / "logs")
    assert codes == [expect], read_logs(path.parent / "logs")
    return read_metrics(path.parent / "run"), path.parent


def test_activation_checkpointing_and_bf16(shards, tmp_path):
    plain, _ = train(tmp_path, shards, "plain")
    recomputed, _ = train(tmp_path, shards, "ac", "train.activation_checkpointing=true")
    bf16, _ = train(tmp_path, shards, "bf16", "train.dtype=bf16")
    assert len(plain) == STEPS and plain[-1]["loss"] < plain[0]["loss"]
    assert [(r["loss"], r["grad_norm"]) for r in recomputed] == [(r["loss"], r["grad_norm"]) for r in plain]
    for fp32, low in zip(plain, bf16):
        assert low["loss"] == pytest.approx(fp32["loss"], rel=1e-2)


def test_model_vocabulary_smaller_than_the_tokenizer_is_refused(shards, tmp_path):
    from pretrain.config import load_run_config
    from pretrain.errors import ConfigError
    from pretrain.train import check_vocabulary

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"base": str(REPO / "configs/models/molecules_tiny.yaml"), "vocab_size": 40},
        "data": {"modality": "molecules", "shards": str(shards)},
        "curriculum": {"stages": [{"context_len": 128, "micro_batch_size": 4, "tokens": 512}]}}))
    with pytest.raises(ConfigError, match=r"model.vocab_size=40 is smaller than .* \(45\); set model.vocab_size=45"):
        check_vocabulary(load_run_config(path))
