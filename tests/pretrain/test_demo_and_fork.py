"""`bioxlstm demo` end to end (reduced steps) and forking a run from another run's checkpoint."""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evaluation import QUICK_SUITES
from pretrain.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
DEMO_STEPS = 60


def run_cli(args: list, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "launchers.main", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = run_cli(["demo", "--out", out, "--steps", DEMO_STEPS], cwd=out)
    return out, result


def test_demo_beats_the_unigram_baseline_for_every_modality(demo):
    out, result = demo
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = re.findall(r"^(dna|protein|molecules)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+below unigram$",
                      result.stdout, flags=re.M)
    assert {r[0] for r in rows} == {"dna", "protein", "molecules"}, result.stdout[-3000:]
    for modality, steps, tokens, val_loss, unigram in rows:
        assert int(steps) == DEMO_STEPS
        assert float(val_loss) < float(unigram)
        # the 2-stage curriculum was walked: both context lengths appear, LR continuous
        records = read_metrics(out / modality / "run")
        assert [r["context_len"] for r in records][0] == 256 and records[-1]["context_len"] == 512
        assert len({r["tokens"] - p["tokens"] for p, r in zip(records, records[1:])}) == 1
        # packed rows (protein, molecules): nearly every token carries loss, and the metrics say so
        timed = [r for r in records if "loss_tokens_per_s" in r]
        assert timed and all(0 < r["loss_tokens_per_s"] <= r["tokens_per_s"] * 1.0001 for r in timed)
        if modality != "dna":
            share = sum(r["loss_tokens"] for r in records) / (records[-1]["tokens"])
            assert share > 0.97, f"{modality}: {share:.3f} of the trained tokens carried loss"
        assert (out / modality / "run" / "config.yaml").is_file()
        # the demo ends with the paper's measures (quick suites, in-training evaluation at the end)
        report = json.loads((out / modality / "run" / "eval" / "eval.json").read_text())
        assert set(report["suites"]) == set(QUICK_SUITES[modality])
        evals = read_metrics(out / modality / "run", "eval")
        assert evals and evals[-1]["step"] == DEMO_STEPS and 0 < evals[-1]["eval_share"] < 1
        assert f"report {out / modality / 'run' / 'eval' / 'eval.md'}" in result.stdout
        assert list((out / modality / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "protein" / "run" / "eval" / "protein_icl_curve.png").is_file()
    assert (out / "molecules" / "run" / "eval" / "chem_domains_fcd.png").is_file()


def test_fork_from_another_runs_checkpoint_at_a_later_stage(demo, tmp_path):
    """`--from RUN --stage 1` takes the weights and optimizer of RUN's latest checkpoint and starts
    stage 1 from its first sample, at the token count where stage 1 begins (LR continues)."""
    out, result = demo
    assert result.returncode == 0, result.stderr[-3000:]
    source = out / "molecules" / "run"
    config = source / "config.yaml"
    fork = tmp_path / "fork"
    result = run_cli(["train", "--config", config, f"train.out_dir={fork}", "train.progress=false",
                      "train.eval_every=0", "--from", source, "--stage", "1"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"forked from {source / 'checkpoints'}" in result.stdout
    source_records, fork_records = read_metrics(source), read_metrics(fork)
    first_stage1 = next(r for r in source_records if r["stage"] == 1)
    assert fork_records[0]["step"] == first_stage1["step"]
    assert fork_records[0]["tokens"] == first_stage1["tokens"]
    assert fork_records[0]["lr"] == first_stage1["lr"]
    assert [r["step"] for r in fork_records] == [r["step"] for r in source_records if r["stage"] == 1]
    # trained weights were loaded: the first forked step is far below the untrained loss ln(V)
    assert fork_records[0]["loss"] < 0.8 * math.log(45)
    assert fork_records[0]["loss"] < source_records[0]["loss"] - 0.3


def test_fork_refuses_a_stage_outside_the_curriculum(demo, tmp_path):
    out, _ = demo
    source = out / "molecules" / "run"
    result = run_cli(["train", "--config", source / "config.yaml", f"train.out_dir={tmp_path / 'x'}",
                      "--from", source, "--stage", "5"], cwd=tmp_path)
    assert result.returncode == 2
    assert "--stage 5: the curriculum has stages 0..1" in result.stderr
