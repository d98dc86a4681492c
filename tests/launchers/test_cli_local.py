"""`bioxlstm launch local` option checks and help (the training itself: test_preemption_end_to_end)."""
from __future__ import annotations

import subprocess
import sys

from launchers.main import main


def test_nproc_not_divisible_by_context_parallel_is_one_line(run_config, capsys):
    assert main(["launch", "local", "--nproc", "3", "--config", str(run_config),
                 "parallel.context_parallel_size=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --nproc 3 = 3 processes do not split into context-parallel groups")
    assert "\n" not in err


def test_nproc_must_be_positive(run_config, capsys):
    assert main(["launch", "local", "--nproc", "0", "--config", str(run_config)]) == 2
    assert "--nproc 0: must be at least 1" in capsys.readouterr().err


def test_help_explains_every_option():
    for target in ("local", "slurm"):
        result = subprocess.run([sys.executable, "-m", "launchers.main", "launch", target, "--help"],
                                capture_output=True, text=True, check=True)
        for option in ("--config", "--resume") + (("--nproc", "--master-port") if target == "local" else (
                "--partition", "--stage-groups", "--stage-nodes", "--max-retries", "--max-timeouts", "--dry-run")):
            assert option in result.stdout
    bare = subprocess.run([sys.executable, "-m", "launchers.main", "launch"], capture_output=True, text=True)
    assert bare.returncode == 2 and "slurm" in bare.stdout and "local" in bare.stdout


def test_a_worker_reports_a_user_facing_error_in_one_line_with_exit_2(run_config):
    """What a rank of `launch local` prints when the trainer refuses (here: no shards built yet)."""
    result = subprocess.run([sys.executable, "-m", "launchers.worker", "--config", str(run_config)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "manifest.json" in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
