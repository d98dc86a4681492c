"""The trainer under context parallelism: 2 ranks sharing each sequence (CP=2, DP=1) follow the
same loss curve as one rank holding whole sequences, step for step (fp32, rounding only).

This checks the trainer's side of CP: sequence split of ids/labels/positions, the per-rank
loss = local token-loss sum x divisor / global token count, and DeepSpeed's reduction over
the DP x CP group (pretrain.parallel), through the real model's cp_group seam.
"""
import yaml

import pytest

from trainer_processes import REPO, read_logs, run_ranks

from pretrain.metrics import read_metrics


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from data_pipeline.demo import build_demo_shards

    return build_demo_shards(tmp_path_factory.mktemp("cp_shards") / "molecules", "molecules")


def config(tmp_path, shards, cp_size):
    path = tmp_path / f"cp{cp_size}" / "config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump({
        "model": {"base": str(REPO / "configs/models/molecules_tiny.yaml"), "vocab_size": 45,
                  "d_model": 32, "num_blocks": 2},
        "data": {"modality": "molecules", "shards": str(shards), "num_workers": 1},
        "train": {"out_dir": str(path.parent / "run"), "lr": 3e-3, "zero_stage": 2, "dtype": "fp32",
                  "checkpoint_every": 0, "eval_every": 0, "eval_batches": 2, "log_every": 1,
                  "progress": False, "tensorboard": False},
        "parallel": {"context_parallel_size": cp_size},
        "curriculum": {"stages": [{"context_len": 128, "micro_batch_size": 2, "tokens": 4 * 256}]},
    }))
    return path


def test_cp2_training_matches_single_rank(shards, tmp_path):
    runs = {}
    for cp_size in (1, 2):
        path = config(tmp_path, shards, cp_size)
        codes = run_ranks(cp_size, ["--config", path], path.parent / "logs")
        assert codes == [0] * cp_size, read_logs(path.parent / "logs")
        runs[cp_size] = read_metrics(path.parent / "run")
    assert [r["step"] for r in runs[2]] == [1, 2, 3, 4]
    for single, split in zip(runs[1], runs[2]):
        assert split["loss_tokens"] == single["loss_tokens"]
        assert split["loss"] == pytest.approx(single["loss"], rel=2e-5)
        assert split["grad_norm"] == pytest.approx(single["grad_norm"], rel=2e-4)
    assert runs[2][-1]["loss"] < runs[2][0]["loss"]          # it trains
    val1 = read_metrics(tmp_path / "cp1" / "run", kind="val")[-1]["loss"]
    val2 = read_metrics(tmp_path / "cp2" / "run", kind="val")[-1]["loss"]
    assert val2 == pytest.approx(val1, rel=2e-5)
