"""Mistakes caught before anything is queued: one clear error each, nothing written."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import yaml

from launchers.errors import LaunchOptionError, OutputDirError, ParallelLayoutError
from launchers.preflight import (check_existing_run, check_parallel_layout, check_partition, check_writable,
                                 differing_keys)


def test_gpus_not_divisible_by_context_parallel_size():
    check_parallel_layout(8, 4, "2 node(s) x --gpus-per-node 4")
    with pytest.raises(ParallelLayoutError, match=r"3 node\(s\) x --gpus-per-node 2 = 6 processes.*"
                                                  r"context_parallel_size=4") as info:
        check_parallel_layout(6, 4, "3 node(s) x --gpus-per-node 2")
    assert info.value.user_facing


def test_missing_partition():
    assert check_partition("gpu") == "gpu"
    with pytest.raises(LaunchOptionError, match="--partition is missing"):
        check_partition(None)


def unwritable_dir(tmp_path):
    """A directory this user cannot create files in: chmod works for users, /sys refuses root."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        return locked
    try:
        tempfile.TemporaryFile(dir="/sys").close()
    except OSError:
        return Path("/sys")
    pytest.skip("no unwritable directory available to root here")


def test_unwritable_output_dir(tmp_path):
    locked = unwritable_dir(tmp_path)
    with pytest.raises(OutputDirError, match="not writable") as info:
        check_writable(locked / "runs" / "prot")
    assert str(locked / "runs" / "prot") in str(info.value)
    check_writable(tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert sorted(tmp_path.iterdir()) == sorted(p for p in tmp_path.iterdir() if p.name == "locked")


def test_output_dir_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputDirError, match="not a directory"):
        check_writable(tmp_path / "afile" / "run")


def test_existing_run_with_different_config_needs_resume(tmp_path):
    saved = {"train": {"lr": 6e-4, "out_dir": str(tmp_path)}, "model": {"d_model": 64}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(saved))
    before = path.read_text()
    check_existing_run(path, saved, resume=False)               # same config: resume silently
    stopped_early = {"train": {**saved["train"], "max_steps": 245}, "model": saved["model"]}
    check_existing_run(path, stopped_early, resume=False)       # a stage job's stop point is not a change
    changed = {"train": {"lr": 1e-3, "out_dir": str(tmp_path)}, "model": {"d_model": 64, "heads": 2}}
    with pytest.raises(OutputDirError, match=r"model\.heads, train\.lr differ.*--resume"):
        check_existing_run(path, changed, resume=False)
    check_existing_run(path, changed, resume=True)
    check_existing_run(tmp_path / "absent.yaml", changed, resume=False)
    assert path.read_text() == before


def test_differing_keys_walks_nested_mappings():
    assert differing_keys({"a": {"b": 1, "c": [1, 2]}}, {"a": {"b": 1, "c": [1, 3]}, "d": 0}) == ["a.c", "d"]
    assert differing_keys({"a": 1}, {"a": 1}) == []
