"""Fake SLURM client commands on PATH: the only stand-ins in these tests (no SLURM exists here).

Each command appends one JSON line {"cmd": name, "args": [...]} to $FAKE_SLURM_LOG. `sbatch`
also keeps a copy of the submitted script (submitit moves the original) and answers like the
real one, "Submitted batch job <id>", with ids counting up from 1234. `scontrol show hostnames`
expands with a tiny table, everything else succeeds silently.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

FAKE_COMMAND = r'''#!{python}
import json, os, shutil, sys
from pathlib import Path
name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
log = Path(os.environ["FAKE_SLURM_LOG"])
entry = {{"cmd": name, "args": args}}
if name == "sbatch":
    counter = log.with_suffix(".next_id")
    job_id = int(counter.read_text()) if counter.exists() else 1234
    counter.write_text(str(job_id + 1))
    script_copy = log.parent / f"sbatch_{{job_id}}.sh"
    shutil.copy(args[-1], script_copy)
    entry["job_id"] = job_id
    entry["script"] = str(script_copy)
    print(f"Submitted batch job {{job_id}}")
elif name == "sacct":
    print("JobID|State|NodeList")
with log.open("a") as handle:
    handle.write(json.dumps(entry) + "\n")
'''


def install_fake_slurm(bin_dir: Path, log_path: Path, python: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("sbatch", "srun", "sacct", "scontrol", "scancel"):
        path = bin_dir / name
        path.write_text(FAKE_COMMAND.format(python=python))
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    log_path.touch()


def read_calls(log_path: Path, command: str | None = None) -> list[dict]:
    calls = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    return [call for call in calls if command is None or call["cmd"] == command]


def fake_slurm_environ(bin_dir: Path, log_path: Path) -> dict[str, str]:
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "FAKE_SLURM_LOG": str(log_path)}
