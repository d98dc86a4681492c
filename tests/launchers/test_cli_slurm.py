"""`bioxlstm launch slurm` end to end on the command line: dry run, submission, one-line errors."""
from __future__ import annotations

import pytest
import yaml

from submitit.core.utils import DelayedSubmission

from fake_slurm import read_calls
from launchers.main import main


def test_dry_run_prints_scripts_and_resolved_config_and_submits_nothing(fake_slurm, run_config, tmp_path, capsys):
    code = main(["launch", "slurm", "--config", str(run_config), "--partition", "gpu", "--gpus-per-node", "4",
                 "--stage-groups", "0-1,2", "--stage-nodes", "2", "--stage-time", "60,2:00:00",
                 "--setup", "module load cuda/12.4", "--dry-run", "train.lr=1e-3"])
    out = capsys.readouterr().out
    assert code == 0
    resolved = yaml.safe_load(out.split("# ---- sbatch script", 1)[0])
    assert resolved["train"]["lr"] == pytest.approx(1e-3)
    assert resolved["model"]["d_model"] == 32
    assert out.count("#!/bin/bash") == 2
    assert out.count("#SBATCH --nodes=2") == 2 and out.count("#SBATCH --ntasks-per-node=4") == 2
    assert "#SBATCH --time=60" in out and "#SBATCH --time=120" in out
    assert "#SBATCH --dependency='afterok:<job id of stages0-1>'" in out
    assert "module load cuda/12.4" in out and "(stops after stage 1)" in out and "(stops after stage 2)" in out
    assert read_calls(fake_slurm) == []
    assert not (tmp_path / "runs").exists()


def test_submit_chains_stage_jobs(fake_slurm, run_config, tmp_path, capsys):
    code = main(["launch", "slurm", "--config", str(run_config), "--partition", "gpu", "--nodes", "2",
                 "--gpus-per-node", "2", "--chain-stages", "--max-retries", "1"])
    assert code == 0
    calls = read_calls(fake_slurm, "sbatch")
    scripts = [open(call["script"]).read() for call in calls]
    assert len(scripts) == 3
    assert "--dependency" not in scripts[0]
    assert "#SBATCH --dependency=afterok:1234" in scripts[1]
    assert "#SBATCH --dependency=afterok:1235" in scripts[2]
    assert "submitted job 1236: stage2 on 2 node(s) x 2 GPU(s)" in capsys.readouterr().out
    job = DelayedSubmission.load(tmp_path / "runs" / "prot" / "slurm" / "1234" / "1234_submitted.pkl").function
    assert job.train_argv == ["--config", str(run_config)]
    assert job.max_retries == 1 and job.stop_after_stage == 0
    # inside the job, stage 0 ends after ceil(1e6 tokens / (256 x 4 x 4 ranks)) = 245 steps
    assert job.argv_for_world(4) == ["--config", str(run_config), "train.max_steps=245"]
    last = DelayedSubmission.load(tmp_path / "runs" / "prot" / "slurm" / "1236" / "1236_submitted.pkl").function
    assert last.stop_after_stage == 2
    assert last.argv_for_world(4) == ["--config", str(run_config), f"train.max_steps={245 + 489 + 977}"]


def run_error(argv, capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err.strip()


def test_missing_partition_is_one_line(fake_slurm, run_config, capsys):
    err = run_error(["launch", "slurm", "--config", str(run_config)], capsys)
    assert err.startswith("error: --partition is missing") and "\n" not in err


def test_gpus_not_divisible_by_context_parallel(fake_slurm, run_config, capsys):
    err = run_error(["launch", "slurm", "--config", str(run_config), "--partition", "gpu", "--nodes", "3",
                     "--gpus-per-node", "2", "parallel.context_parallel_size=4"], capsys)
    assert "3 node(s) x --gpus-per-node 2" in err and "context_parallel_size=4" in err
    assert read_calls(fake_slurm) == []


def test_chained_stage_with_too_few_gpus_for_its_context_parallel(fake_slurm, run_config, capsys):
    err = run_error(["launch", "slurm", "--config", str(run_config), "--partition", "gpu", "--gpus-per-node", "2",
                     "--stage-nodes", "1,1,3", "parallel.context_parallel_size=4"], capsys)
    assert "(stage0)" in err and "2 processes" in err


def test_chained_groups_must_keep_the_world_size(fake_slurm, run_config, capsys):
    err = run_error(["launch", "slurm", "--config", str(run_config), "--partition", "gpu", "--gpus-per-node", "2",
                     "--stage-nodes", "1,1,2"], capsys)
    assert "different node counts (1, 2)" in err and "same number of processes" in err
    assert read_calls(fake_slurm) == []


def test_existing_run_with_other_config_needs_resume(fake_slurm, run_config, tmp_path, capsys):
    from pretrain.config import load_run_config

    run_dir = tmp_path / "runs" / "prot"
    load_run_config(run_config).save(run_dir)
    saved = (run_dir / "config.yaml").read_text()
    base = ["launch", "slurm", "--config", str(run_config), "--partition", "gpu", "--dry-run"]
    assert main(base) == 0                                   # same config: resumes, fine
    capsys.readouterr()
    err = run_error(base + ["train.lr=1e-3"], capsys)
    assert "different config (train.lr differ" in err and "--resume" in err
    assert main(base + ["train.lr=1e-3", "--resume"]) == 0
    assert (run_dir / "config.yaml").read_text() == saved


def test_bad_stage_time_and_counts(fake_slurm, run_config, capsys):
    err = run_error(["launch", "slurm", "--config", str(run_config), "--partition", "gpu",
                     "--stage-time", "1:2:3:4"], capsys)
    assert "time '1:2:3:4'" in err
    err = run_error(["launch", "slurm", "--config", str(run_config), "--partition", "gpu", "--nodes", "0"], capsys)
    assert "--nodes 0: must be at least 1" in err
