"""2-rank gloo training runs through the real trainer: preemption and crashes resume exactly.

Each run is `python -m pretrain.train`-style processes with RANK/WORLD_SIZE env, DeepSpeed on
CPU, fp32, tiny Prot-xLSTM on the bundled UniProt demo clusters, 2 curriculum stages
(context 64 x micro 4 -> context 128 x micro 2, grad_accum 2, 4 steps each). An interrupted
and resumed run must reproduce the uninterrupted run's per-step losses and gradient norms
bit for bit, and train on exactly the same samples at the same steps on every rank.
"""
import json
import shutil
from pathlib import Path

import pytest
import yaml

from trainer_processes import ONE_LINE_ERRORS, REPO, read_logs, run_ranks, sigterm_when, start_ranks, wait_all

from pretrain.metrics import read_metrics

EXIT_PREEMPTED = 75
WORLD = 2
STEPS = 8


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from data_pipeline.demo import build_demo_shards

    return build_demo_shards(tmp_path_factory.mktemp("shards") / "protein", "protein")


def write_config(path: Path, shards: Path, zero_stage: int) -> Path:
    tokens_per_step = 64 * 4 * 2 * WORLD
    config = {
        "model": {"base": str(REPO / "configs/models/protein_tiny.yaml"), "d_model": 32, "num_blocks": 2},
        "data": {"modality": "protein", "shards": str(shards), "num_workers": 2},
        "train": {"out_dir": str(path.parent / "run"), "lr": 3e-3, "min_lr": 3e-4, "warmup_tokens": 2048,
                  "zero_stage": zero_stage, "dtype": "fp32", "grad_accum": 2, "checkpoint_every": 3,
                  "keep_checkpoints": 2, "eval_every": 0, "eval_batches": 2, "log_every": 1,
                  "record_samples": True, "progress": False, "tensorboard": False},
        "curriculum": {"stages": [
            {"context_len": 64, "micro_batch_size": 4, "tokens": 4 * tokens_per_step},
            {"context_len": 128, "micro_batch_size": 2, "tokens": 4 * tokens_per_step}]},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def curve(run_dir: Path) -> list:
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"], r["stage"]) for r in read_metrics(run_dir)]


def samples(run_dir: Path) -> list:
    return [[json.loads(line) for line in (run_dir / f"samples_rank{r:05d}.jsonl").read_text().splitlines()]
            for r in range(WORLD)]


def check_run(codes, log_dir, expected=0):
    assert codes == [expected] * WORLD, read_logs(log_dir)


_REFERENCE_RUNS = {}


def reference_run(zero_stage: int, shards: Path, tmp_path_factory) -> Path:
    """An uninterrupted run (once per ZeRO stage): the curve every interrupted run must reproduce."""
    if zero_stage not in _REFERENCE_RUNS:
        base = tmp_path_factory.mktemp(f"reference_zero{zero_stage}")
        config = write_config(base / "config.yaml", shards, zero_stage)
        check_run(run_ranks(WORLD, ["--config", config], base / "logs"), base / "logs")
        run_dir = base / "run"
        assert [r[0] for r in curve(run_dir)] == list(range(1, STEPS + 1))
        assert {r[4] for r in curve(run_dir)} == {0, 1}
        _REFERENCE_RUNS[zero_stage] = run_dir
    return _REFERENCE_RUNS[zero_stage]


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def reference(request, shards, tmp_path_factory):
    return request.param, reference_run(request.param, shards, tmp_path_factory)


@pytest.fixture(scope="module")
def reference_zero2(shards, tmp_path_factory):
    """The checkpoint protocol does not depend on the ZeRO stage: its tests run on ZeRO-2."""
    return 2, reference_run(2, shards, tmp_path_factory)


def test_sigterm_then_resume_is_bit_exact_across_the_stage_boundary(reference, shards, tmp_path):
    """SIGTERM in stage 0 -> checkpoint + exit 75; the fresh resume walks into stage 1 and the
    whole curve and sample sequence equal the uninterrupted run's."""
    zero_stage, reference_dir = reference
    config = write_config(tmp_path / "config.yaml", shards, zero_stage)
    run_dir = tmp_path / "run"
    procs = start_ranks(WORLD, ["--config", config], tmp_path / "logs")
    sigterm_when(procs, lambda: len(read_metrics(run_dir)) >= 1)
    check_run(wait_all(procs, tmp_path / "logs"), tmp_path / "logs", EXIT_PREEMPTED)
    stopped_at = len(read_metrics(run_dir))
    assert 1 <= stopped_at <= 4                         # stage 0: the resume crosses into stage 1
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step_{stopped_at:08d}"          # checkpointed at the step it stopped

    check_run(run_ranks(WORLD, ["--config", config], tmp_path / "logs2"), tmp_path / "logs2")
    assert f"resumed from {run_dir / 'checkpoints' / latest}" in (tmp_path / "logs2" / "rank0.log").read_text()
    assert curve(run_dir) == curve(reference_dir)       # bitwise: floats round-trip through JSON exactly
    assert samples(run_dir) == samples(reference_dir)   # same samples, same steps, every rank
    for rank_samples in samples(run_dir):
        for stage in (0, 1):
            keys = [k for rec in rank_samples if rec["stage"] == stage for k in rec["keys"]]
            assert len(keys) == len(set(keys))          # no sample twice within a stage's epoch


def test_crash_while_writing_a_checkpoint_resumes_from_the_previous_one(reference_zero2, shards, tmp_path):
    """Rank 0 dies after the step-6 shards are written but before `latest` moves (a node crash
    mid-save, inside stage 1). `latest` still names step 3 (stage 0), which resumes; the torn
    step-6 directory is rewritten; the curve equals the uninterrupted run's."""
    zero_stage, reference_dir = reference_zero2
    config = write_config(tmp_path / "config.yaml", shards, zero_stage)
    run_dir = tmp_path / "run"
    crash = ("import os, pretrain.checkpoint as c\n"
             "real = c.write_latest_marker\n"
             "def crash_at_step_6(root, tag):\n"
             "    if tag.endswith('00000006'):\n"
             "        os._exit(9)\n"
             "    real(root, tag)\n"
             "c.write_latest_marker = crash_at_step_6\n")
    codes = run_ranks(WORLD, ["--config", config], tmp_path / "logs", preamble=crash)
    assert codes[0] == 9, read_logs(tmp_path / "logs")
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    assert (run_dir / "checkpoints" / "step_00000006").is_dir()   # torn: written but never published

    check_run(run_ranks(WORLD, ["--config", config], tmp_path / "logs2"), tmp_path / "logs2")
    assert "resumed from" in (tmp_path / "logs2" / "rank0.log").read_text()
    assert curve(run_dir) == curve(reference_dir)
    assert samples(run_dir) == samples(reference_dir)
    manifest = json.loads((run_dir / "checkpoints" / "step_00000006" / "manifest.json").read_text())
    assert manifest["step"] == 6
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    assert kept == ["step_00000006", f"step_{STEPS:08d}"]    # keep_checkpoints=2


def test_damaged_or_incompatible_checkpoint_is_refused_with_one_clear_error(reference_zero2, shards, tmp_path):
    zero_stage, reference_dir = reference_zero2
    run_dir = tmp_path / "run"
    shutil.copytree(reference_dir, run_dir)
    config = write_config(tmp_path / "config.yaml", shards, zero_stage)
    checkpoint = run_dir / "checkpoints" / f"step_{STEPS:08d}"

    codes = run_ranks(1, ["--config", config, "model.d_model=48"], tmp_path / "logs_model",
                      preamble=ONE_LINE_ERRORS)
    log = (tmp_path / "logs_model" / "rank0.log").read_text()
    assert codes == [2] and "model.d_model (checkpoint 32, config 48)" in log, log

    target = checkpoint / "mp_rank_00_model_states.pt"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    codes = run_ranks(WORLD, ["--config", config], tmp_path / "logs_damaged", preamble=ONE_LINE_ERRORS)
    log = (tmp_path / "logs_damaged" / "rank0.log").read_text()
    assert codes == [2, 2] and "mp_rank_00_model_states.pt: size/sha256 differ" in log, log
