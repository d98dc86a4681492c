"""In-training evaluation on 2 real gloo ranks (ZeRO-3 with context parallelism 2, and ZeRO-3
with data parallelism 2) writes the figures `bioxlstm eval` computes on the export of the same
checkpoint, logs them to metrics.jsonl at the configured interval and keeps the latest report
and plots in the run directory."""
import json
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "tests" / "pretrain"))

from trainer_processes import read_logs, run_ranks  # noqa: E402

from launchers.main import main as bioxlstm  # noqa: E402

OPTIONS = {"max_families": 3, "num_samples": 2, "num_context": 2, "max_new_tokens": 12}


@pytest.fixture(scope="module")
def protein_shards(tmp_path_factory):
    from data_pipeline.demo import build_demo_shards

    return build_demo_shards(tmp_path_factory.mktemp("eval_shards") / "shards", "protein")


def _config(root: Path, shards: Path, cp: int) -> Path:
    config = {
        "model": {**yaml.safe_load((REPO / "configs" / "models" / "protein_tiny.yaml").read_text()),
                  "num_blocks": 2},
        "data": {"modality": "protein", "shards": str(shards), "num_workers": 1},
        "train": {"out_dir": str(root / "run"), "zero_stage": 3, "dtype": "fp32", "lr": 3e-3,
                  "checkpoint_every": 0, "eval_every": 0, "eval_batches": 1, "tensorboard": False,
                  "progress": False, "log_every": 1},
        "parallel": {"context_parallel_size": cp},
        "curriculum": {"stages": [{"context_len": 32, "micro_batch_size": 2, "tokens": 2 * 32 * 2 * 2 // cp},
                                  {"context_len": 64, "micro_batch_size": 1, "tokens": 2 * 64 * 2 // cp}]},
        "eval": {"suites": ["protein-icl"], "every": 2, "options": OPTIONS, "max_time_share": 1.0,
                 "context_len": 1024},
    }
    path = root / "run_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("cp", [2, 1], ids=["zero3-cp2", "zero3-dp2"])
def test_in_training_figures_equal_bioxlstm_eval_on_the_export(cp, protein_shards, tmp_path):
    codes = run_ranks(2, ["--config", _config(tmp_path, protein_shards, cp)], tmp_path / "logs")
    assert codes == [0, 0], read_logs(tmp_path / "logs")
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert [r["step"] for r in evals] == [s for s in steps if s % 2 == 0 or s == steps[-1]]
    assert all(r["protein-icl/first_perplexity"] > 1 for r in evals)
    in_training = json.loads((run / "eval" / "eval.json").read_text())
    assert (run / "eval" / "protein_icl_curve.png").is_file()

    assert bioxlstm(["export", str(run), str(tmp_path / "export")]) == 0
    options = sum((["--option", f"{k}={v}"] for k, v in OPTIONS.items()), [])
    assert bioxlstm(["eval", str(tmp_path / "export"), "protein-icl", "--data", str(protein_shards), "--quick",
                     "--context-len", "1024", "--out", str(tmp_path / "cli"), *options]) == 0
    from_export = json.loads((tmp_path / "cli" / "eval.json").read_text())
    assert in_training["figures"].keys() == from_export["figures"].keys()
    assert from_export["suites"]["protein-icl"]["settings"]["context_lens"] == [32, 64]   # the curriculum's
    assert in_training["suites"]["protein-icl"]["settings"] == from_export["suites"]["protein-icl"]["settings"]
    for name, value in from_export["figures"].items():
        assert in_training["figures"][name] == pytest.approx(value, rel=1e-6), name
    assert in_training["figures"] != {k: v * 1.01 for k, v in from_export["figures"].items()}


def test_an_unknown_or_foreign_suite_in_the_run_config_is_refused_at_load(tmp_path, protein_shards):
    from pretrain.config import load_run_config
    from pretrain.errors import ConfigError

    path = _config(tmp_path, protein_shards, 1)
    with pytest.raises(ConfigError, match=r"eval.suites.0='protein-icm': unknown suite; known suites: protein-icl"):
        load_run_config(path, ["eval.suites=[protein-icm]"])
    with pytest.raises(ConfigError, match=r"eval.suites.0='dna-lm' evaluates another modality"):
        load_run_config(path, ["eval.suites=[dna-lm]"])
    with pytest.raises(ConfigError, match=r"eval.options: expected a mapping"):
        load_run_config(path, ["eval.options=3"])


def test_an_evaluation_leaves_the_training_random_states_as_they_were():
    import random

    import numpy as np
    import torch

    from pretrain.in_training_eval import random_states_kept

    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    expected = (torch.rand(4), random.random(), np.random.rand())
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    with random_states_kept(torch.device("cpu")):
        torch.nn.Linear(64, 64)                      # initial weights draw from the global generator
        random.random(), np.random.rand(8)
    got = (torch.rand(4), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]
