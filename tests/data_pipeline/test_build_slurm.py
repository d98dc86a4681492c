"""`bioxlstm data build ... --slurm N`: a submitit job array of parts and a merge job, against fake
sbatch on PATH (the only stand-in); the pickled jobs are then run here, as SLURM would."""
import sys
from pathlib import Path

import pytest
from submitit.core.utils import DelayedSubmission

from data_pipeline.build_dna import build_dna
from data_pipeline.demo import LAMBDA
from launchers.main import main as bioxlstm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "launchers"))
from fake_slurm import fake_slurm_environ, install_fake_slurm, read_calls  # noqa: E402

ARGS = ["data", "build", "dna", str(LAMBDA), "--window-len", "2000", "--val-fraction", "0.2", "--partition", "cpu",
        "--workers", "2", "--setup", "source .venv/bin/activate"]


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    log = tmp_path / "slurm_calls.jsonl"
    install_fake_slurm(tmp_path / "bin", log, sys.executable)
    for key, value in fake_slurm_environ(tmp_path / "bin", log).items():
        monkeypatch.setenv(key, value)
    return log


def test_dry_run_prints_the_array_and_merge_scripts(fake_slurm, tmp_path, capsys):
    assert bioxlstm(ARGS + ["--out", str(tmp_path / "build"), "--slurm", "3", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("#!/bin/bash") == 2 and "#SBATCH --array=0-2%3" in out
    assert "#SBATCH --dependency='afterok:<array job id>'" in out and "#SBATCH --cpus-per-task=2" in out
    assert "source .venv/bin/activate" in out and f"--part I/3 into {tmp_path / 'build'}.parts" in out
    assert read_calls(fake_slurm) == [] and not (tmp_path / "build").exists()


def test_submitted_array_and_merge_jobs_build_what_one_build_does(fake_slurm, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative --out: the jobs get absolute paths
    assert bioxlstm(ARGS + ["--out", "build", "--slurm", "3"]) == 0
    printed = capsys.readouterr().out
    calls = read_calls(fake_slurm, "sbatch")
    scripts = [Path(call["script"]).read_text() for call in calls]
    assert len(scripts) == 2 and "#SBATCH --array=0-2%3" in scripts[0] and "--dependency" not in scripts[0]
    assert "#SBATCH --dependency=afterok:1234" in scripts[1]
    assert "submitted array job 1234: 3 parts" in printed and "submitted merge job 1235" in printed
    pickles = sorted((tmp_path / "build.parts" / "slurm").rglob("*_submitted.pkl"))
    tasks = [DelayedSubmission.load(p) for p in pickles]
    parts = [t for t in tasks if t.args]  # the array tasks get their index; the merge job none
    assert sorted(t.args[0] for t in parts) == [0, 1, 2] and len(tasks) == 4
    for task in parts:  # what each array task runs on its node
        task.function(*task.args)
    next(t for t in tasks if not t.args).function()  # the merge job
    build_dna([str(LAMBDA)], str(tmp_path / "single"), window_len=2000, val_fraction=0.2, progress=False)
    merged = {p.name: p.read_bytes() for p in (tmp_path / "build").iterdir()}
    assert merged == {p.name: p.read_bytes() for p in (tmp_path / "single").iterdir()}


def test_slurm_without_partition_is_one_line(fake_slurm, tmp_path, capsys):
    args = [a for a in ARGS if a not in ("--partition", "cpu")]
    assert bioxlstm(args + ["--out", str(tmp_path / "b"), "--slurm", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --partition is missing") and "\n" not in err
