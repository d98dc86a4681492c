"""Training under faults a cluster inflicts: real trainer processes (2 ranks, gloo, DeepSpeed on CPU).

Each test injects one fault through a real mechanism (training_fault_hooks.py: NaN/inf in the
logits or their gradient, SIGKILL / SIGSTOP of a rank mid-step, SIGTERM while a checkpoint is
written, a kernel file-size limit that fails checkpoint writes as a full disk does, a
truncated checkpoint file, a changed world size) and checks that the run fails fast with one
clear message or survives, and that a restart loses at most the steps since the last
checkpoint and then reproduces the uninterrupted run bit for bit.

Tiny Prot-xLSTM (d_model 32, 2 blocks) on the bundled UniProt demo clusters, fp32, one stage of
context 64, micro-batch 2, grad_accum 2 (training_fault_runs.write_config).
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from training_fault_runs import (EXIT_PREEMPTED, EXIT_USER_ERROR, LAUNCH_TIMEOUT_S, STEPS, WORLD, child_environ,
                                 kill_leftovers, launcher_log, process_alive, rank_pids, read_logs, read_probe,
                                 run_ranks_with_faults, start_launcher, wait_launcher, write_config)

from pretrain.checkpoint import verify_checkpoint
from pretrain.metrics import read_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from data_pipeline.demo import build_demo_shards

    return build_demo_shards(tmp_path_factory.mktemp("shards") / "protein", "protein")


def curve(run_dir: Path) -> list:
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in read_metrics(run_dir)]


def latest_tag(run_dir: Path) -> str:
    return (run_dir / "checkpoints" / "latest").read_text().strip()


def step_dirs(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))


# ------------------------------------------------------------------------------ non-finite steps
BAD_STEPS_LIMIT = 3
NONFINITE_FAULTS = [
    {"kind": "loss_nan", "steps": [2], "ranks": [1]},          # one rank's loss: every rank must skip
    {"kind": "grad_nan", "steps": [4], "ranks": [0]},          # finite loss, NaN gradient
    {"kind": "loss_inf", "steps": [5], "ranks": [1]},          # inf loss with a finite gradient
    {"kind": "loss_nan", "steps": [7, 8, 9], "ranks": [0, 1]},  # K in a row: the run stops
]
SKIPPED = {2, 4, 5, 7, 8, 9}


@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3], ids=["zero0", "zero1", "zero2", "zero3"])
def test_nonfinite_steps_are_skipped_on_every_rank_and_k_in_a_row_stop_the_run(shards, tmp_path, zero_stage):
    """Steps 2, 4, 5 carry a NaN loss on one rank, a NaN gradient on the other, an inf loss with
    a finite gradient: each is skipped on both ranks with weights and optimizer state (moments,
    step counts, fp32 master partition) bit-identical before and after, logged, and training
    continues (steps 3 and 6 update). Steps 7, 8, 9 are bad on both ranks: with
    train.max_bad_steps=3 the run stops at step 9 with one line naming the step and the last
    good checkpoint (step 6; the checkpoint due at step 4 waited for the good step 6)."""
    config = write_config(tmp_path, shards, steps=12, zero_stage=zero_stage, max_bad_steps=BAD_STEPS_LIMIT)
    run_dir, probe_dir = tmp_path / "run", tmp_path / "probe"
    codes = run_ranks_with_faults(config, tmp_path / "logs",
                                  {"nonfinite": NONFINITE_FAULTS, "probe_dir": str(probe_dir)})
    logs = read_logs(tmp_path / "logs")
    assert codes == [EXIT_USER_ERROR] * WORLD, logs
    good = run_dir / "checkpoints" / "step_00000006"
    for rank in range(WORLD):
        log = (tmp_path / "logs" / f"rank{rank}.log").read_text()
        assert (f"error: step 9: 3 consecutive steps with a non-finite loss or gradient norm "
                f"(train.max_bad_steps=3); stopped without writing a checkpoint. The last good checkpoint is "
                f"{good}") in log, log

    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, 10))
    assert {r["step"] for r in records if r.get("skipped") == "nonfinite loss/grad"} == SKIPPED
    assert [r["bad_steps_in_a_row"] for r in records if "skipped" in r] == [1, 1, 2, 1, 2, 3]
    by_step = {r["step"]: r for r in records}
    assert by_step[4]["loss"] is not None and by_step[2]["loss"] is None and by_step[5]["loss"] is None
    assert all(by_step[s]["grad_norm"] is None for s in SKIPPED)
    assert all(by_step[s]["loss"] is not None for s in set(range(1, 10)) - SKIPPED)
    assert "step 2: non-finite loss or gradient norm" in (tmp_path / "logs" / "rank0.log").read_text()

    assert latest_tag(run_dir) == "step_00000006"
    assert step_dirs(run_dir) == ["step_00000003", "step_00000006"]   # due at 2 and 4: written at 3 and 6

    for rank in range(WORLD):
        probe = {r["step"]: r for r in read_probe(probe_dir, rank)}
        assert sorted(probe) == list(range(1, 10))
        for step, record in probe.items():
            if step in SKIPPED:
                assert record["after"] == record["before"], (rank, step)
                # ZeRO 1-3: DeepSpeed's overflow skip; ZeRO-0 fp32: gradients dropped, no engine.step()
                assert record["engine_step"] == (zero_stage > 0) and not record["applied"], (rank, step)
            else:
                assert record["applied"], (rank, step)
                assert record["after"]["weights"] != record["before"]["weights"], (rank, step)
                assert record["after"]["optimizer"] != record["before"]["optimizer"], (rank, step)


def test_the_bad_step_streak_survives_a_stop_and_resume(shards, tmp_path):
    """Steps 3 and 4 are bad, and the run stops after step 4 (train.max_steps=4, its checkpoint
    holds the streak of 2). Resumed without the stop, step 5 is bad too: with
    train.max_bad_steps=3 the resumed run stops at step 5, as the uninterrupted run would."""
    config = write_config(tmp_path, shards, steps=8, max_bad_steps=BAD_STEPS_LIMIT)
    run_dir = tmp_path / "run"
    first = run_ranks_with_faults(config, tmp_path / "logs1", {"nonfinite": [
        {"kind": "loss_nan", "steps": [3, 4], "ranks": [0, 1]}]}, overrides=["train.max_steps=4"])
    assert first == [0] * WORLD, read_logs(tmp_path / "logs1")
    assert latest_tag(run_dir) == "step_00000004"
    second = run_ranks_with_faults(config, tmp_path / "logs2", {"nonfinite": [   # step 1 of this process
        {"kind": "loss_nan", "steps": [1], "ranks": [0, 1]}]})
    log = read_logs(tmp_path / "logs2")
    assert second == [EXIT_USER_ERROR] * WORLD, log
    assert "error: step 5: 3 consecutive steps with a non-finite loss or gradient norm" in log, log
    assert [r.get("bad_steps_in_a_row") for r in read_metrics(run_dir)] == [None, None, 1, 2, 3]


# ------------------------------------------------------------------------------ crashes and restarts
@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory) -> Path:
    """The uninterrupted run every restarted run must reproduce."""
    base = tmp_path_factory.mktemp("reference")
    codes = run_ranks_with_faults(write_config(base, shards), base / "logs", {})
    assert codes == [0] * WORLD, read_logs(base / "logs")
    assert [r[0] for r in curve(base / "run")] == list(range(1, STEPS + 1))
    return base / "run"


def launch_and_signal_rank1_in_step4(config: Path, tmp_path: Path, signal_name: str, timeout: float):
    """`launch_local` with 2 ranks; rank 1 gets `signal_name` after its first forward of step 4.
    Returns the launcher's exit code and log once it has ended; no rank may outlive it."""
    probe_dir = tmp_path / "probe"
    launcher = start_launcher(config, tmp_path / "logs", {"signal_mid_step": {"rank": 1, "step": 4,
                                                                             "signal": signal_name},
                                                          "probe_dir": str(probe_dir)})
    pids = rank_pids(probe_dir)
    try:
        code = wait_launcher(launcher, tmp_path / "logs", timeout=timeout)
        log = launcher_log(tmp_path / "logs")
        assert not any(process_alive(pid) for pid in pids), log
    finally:
        kill_leftovers(pids)
    return code, log


def test_sigkill_of_one_rank_mid_step_fails_the_job_fast_and_the_restart_loses_at_most_the_unsaved_steps(
        shards, reference, tmp_path):
    """Rank 1 is SIGKILLed inside step 4 (after its first forward, before the backward) under
    `launch_local`: the launcher stops rank 0 and exits 128+9 with no process left. Steps 1-3
    were done, step 2 is the last checkpoint (train.checkpoint_every=2), so the restart through
    `bioxlstm launch local` resumes at step 2 (one finished step lost, <= checkpoint_every) and
    ends with the uninterrupted run's curve, bit for bit."""
    config = write_config(tmp_path, shards)
    run_dir = tmp_path / "run"
    code, log = launch_and_signal_rank1_in_step4(config, tmp_path, "SIGKILL", timeout=120)
    assert code == 128 + signal.SIGKILL, log
    assert "rank 1 exited with code -9; stopping the other ranks" in log
    assert [r[0] for r in curve(run_dir)] == [1, 2, 3]
    assert latest_tag(run_dir) == "step_00000002"
    finished, saved = 3, 2
    assert finished - saved <= 2                                    # train.checkpoint_every

    restart = subprocess.run([sys.executable, "-m", "launchers.main", "launch", "local", "--nproc", str(WORLD),
                              "--config", str(config)], env=child_environ(), cwd=tmp_path, capture_output=True,
                             text=True, timeout=LAUNCH_TIMEOUT_S)
    assert restart.returncode == 0, restart.stdout[-3000:] + restart.stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000002'} at step 2" in restart.stdout
    assert curve(run_dir) == curve(reference)


def test_a_hung_rank_makes_the_others_fail_after_the_collective_timeout(shards, tmp_path):
    """Rank 1 freezes (SIGSTOP: alive, connections open, no progress) inside step 4; no socket
    error will ever come. Rank 0 blocks in the gradient reduction until
    train.collective_timeout_s=15 expires, fails, and the launcher then kills the frozen rank:
    the job ends (non-zero) instead of hanging, and the step-2 checkpoint is intact."""
    config = write_config(tmp_path, shards, collective_timeout_s=15)
    run_dir = tmp_path / "run"
    code, log = launch_and_signal_rank1_in_step4(config, tmp_path, "SIGSTOP", timeout=180)
    assert code == 1, log
    assert "rank 0 exited with code 1; stopping the other ranks" in log
    assert "Timed out waiting 15000ms" in log, log                # gloo, with our timeout
    assert latest_tag(run_dir) == "step_00000002"
    verify_checkpoint(run_dir / "checkpoints" / "step_00000002")


# ------------------------------------------------------------------------------ checkpoints under attack
def test_sigterm_while_writing_a_checkpoint_then_a_truncated_checkpoint_is_refused_and_an_earlier_one_resumes(
        shards, reference, tmp_path):
    """SIGTERM reaches both ranks while they write the step-2 checkpoint: the write completes
    (the handler only sets a flag), the ranks stop at the next step boundary with a step-3
    checkpoint and exit 75, `latest` names it and both checkpoints verify. Then the newest
    checkpoint's optimizer shard is truncated (a node crash after `latest` moved, a bad copy):
    the restart refuses it before loading anything, one line naming the file and the fix, and
    writes nothing. Pointing `latest` at step 2, as the message says, resumes to the
    uninterrupted curve."""
    config = write_config(tmp_path, shards)
    run_dir = tmp_path / "run"
    codes = run_ranks_with_faults(config, tmp_path / "logs", {"sigterm_in_save": {"step": 2}})
    assert codes == [EXIT_PREEMPTED] * WORLD, read_logs(tmp_path / "logs")
    assert latest_tag(run_dir) == "step_00000003"
    for tag in ("step_00000002", "step_00000003"):
        verify_checkpoint(run_dir / "checkpoints" / tag)

    shard = run_dir / "checkpoints" / "step_00000003" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    full_size = shard.stat().st_size
    with open(shard, "r+b") as handle:
        handle.truncate(full_size // 2)
    before = {name: (run_dir / name).read_bytes() for name in ("metrics.jsonl", "config.yaml")}
    codes = run_ranks_with_faults(config, tmp_path / "logs_damaged", {})
    assert codes == [EXIT_USER_ERROR] * WORLD, read_logs(tmp_path / "logs_damaged")
    errors = [line for line in (tmp_path / "logs_damaged" / "rank0.log").read_text().splitlines()
              if line.startswith("error:")]
    assert errors == [f"error: {shard}: size/sha256 differ from manifest.json ({full_size // 2} bytes, "
                      f"expected {full_size}); the checkpoint is damaged, resume from an earlier checkpoint: write "
                      "the tag of a complete one (a step_* directory with a manifest.json) into "
                      f"{run_dir / 'checkpoints' / 'latest'}"], errors
    assert "resumed from" not in read_logs(tmp_path / "logs_damaged")
    assert {name: (run_dir / name).read_bytes() for name in before} == before

    (run_dir / "checkpoints" / "latest").write_text("step_00000002\n")
    codes = run_ranks_with_faults(config, tmp_path / "logs_resumed", {})
    assert codes == [0] * WORLD, read_logs(tmp_path / "logs_resumed")
    assert "resumed from" in (tmp_path / "logs_resumed" / "rank0.log").read_text()
    assert curve(run_dir) == curve(reference)


@pytest.mark.parametrize("failing_ranks", [[1], [0, 1]], ids=["rank1", "all_ranks"])
def test_a_full_disk_while_writing_a_checkpoint_is_one_clear_error_and_loses_nothing(
        shards, reference, tmp_path, failing_ranks):
    """While the step-4 checkpoint is written, writes past 32 KiB fail in the kernel (RLIMIT_FSIZE:
    torch.save's zip writer then raises 'unexpected pos', as on a full disk) on rank 1 only or on
    every rank. Every rank exits 2 with one line naming the directory and "free space or point
    train.out_dir elsewhere"; the partial step-4 directory is gone; `latest`, the step-2
    checkpoint and the metrics are intact; the restart resumes from step 2 and reproduces the
    uninterrupted curve."""
    config = write_config(tmp_path, shards)
    run_dir = tmp_path / "run"
    codes = run_ranks_with_faults(config, tmp_path / "logs",
                                  {"write_limit": {"ranks": failing_ranks, "step": 4, "bytes": 32 * 1024}})
    assert codes == [EXIT_USER_ERROR] * WORLD, read_logs(tmp_path / "logs")
    directory = run_dir / "checkpoints" / "step_00000004"
    for rank in range(WORLD):
        errors = [line for line in (tmp_path / "logs" / f"rank{rank}.log").read_text().splitlines()
                  if line.startswith("error:")]
        assert len(errors) == 1, read_logs(tmp_path / "logs")
        assert errors[0].startswith(f"error: {directory}: could not write the checkpoint ("), errors
        assert "Free space (or quota) or point train.out_dir elsewhere" in errors[0]
        assert f"{run_dir / 'checkpoints' / 'latest'} still names step_00000002" in errors[0]
        if rank in failing_ranks:
            assert "unexpected pos" in errors[0]                  # the writer's own words are kept
    assert not directory.exists()
    assert latest_tag(run_dir) == "step_00000002"
    verify_checkpoint(run_dir / "checkpoints" / "step_00000002")
    assert [r[0] for r in curve(run_dir)] == [1, 2, 3, 4]
    assert curve(run_dir) == curve(reference)[:4]

    if failing_ranks == [1]:                                        # one restart is enough
        codes = run_ranks_with_faults(config, tmp_path / "logs_resumed", {})
        assert codes == [0] * WORLD, read_logs(tmp_path / "logs_resumed")
        assert curve(run_dir) == curve(reference)


def test_resume_with_another_world_size_is_refused_with_one_clear_line(shards, reference, tmp_path):
    """A 2-rank ZeRO-2 checkpoint resumed by `bioxlstm train` as one process: refused before
    anything is loaded or overwritten (DeepSpeed's ZeRO shards are per rank; the loader position
    is per data-parallel rank), exit 2, one line saying what to do."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    config = write_config(tmp_path, shards)
    before = {name: (run_dir / name).read_bytes() for name in ("metrics.jsonl", "config.yaml")}
    result = subprocess.run([sys.executable, "-m", "launchers.main", "train", "--config", str(config)],
                            env=child_environ(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_USER_ERROR, result.stdout[-2000:] + result.stderr[-2000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    checkpoint = run_dir / "checkpoints" / f"step_{STEPS:08d}"
    assert error_lines == [
        f"error: {checkpoint}: written by 2 ranks, this run has 1; resume with the same number of processes "
        "(e.g. `bioxlstm launch local --nproc 2`, or 2 SLURM tasks). A run cannot change its world size: "
        "its ZeRO optimizer shards and data-loader positions are per rank"], result.stderr[-2000:]
    assert {name: (run_dir / name).read_bytes() for name in before} == before


@pytest.mark.parametrize("damage", ["truncate_shard", "delete_train_state", "truncate_manifest", "no_manifest"])
def test_every_kind_of_damaged_checkpoint_is_detected_before_loading(reference, tmp_path, damage):
    """verify_checkpoint (run on every rank before DeepSpeed loads anything) names the damaged
    file and the fix for each way a checkpoint directory gets cut short."""
    from pretrain.errors import CheckpointError

    checkpoint = tmp_path / "step"
    shutil.copytree(reference / "checkpoints" / latest_tag(reference), checkpoint)
    manifest = checkpoint / "manifest.json"
    if damage == "truncate_shard":
        target = checkpoint / "mp_rank_00_model_states.pt"
        target.write_bytes(target.read_bytes()[:1000])
        expected = f"{target}: size/sha256 differ from manifest.json (1000 bytes"
    elif damage == "delete_train_state":
        target = checkpoint / "train_state_rank00001.pt"
        target.unlink()
        expected = f"{target}: listed in manifest.json but missing; the checkpoint is damaged"
    elif damage == "truncate_manifest":
        manifest.write_text(manifest.read_text()[:40])
        expected = f"{manifest}: unreadable (JSONDecodeError"
    else:
        manifest.unlink()
        expected = f"{checkpoint}: no manifest.json; the checkpoint was not completed"
    with pytest.raises(CheckpointError) as raised:
        verify_checkpoint(checkpoint)
    assert str(raised.value).startswith(expected), str(raised.value)
    assert raised.value.user_facing and str(tmp_path / "latest") in str(raised.value)


# ------------------------------------------------------------------------------ counters and settings
def test_corrupt_training_data_skipped_by_the_loader_is_counted_in_the_train_metrics(shards, tmp_path):
    """Every train shard cut to half its length, data.on_corrupt=skip: the samples the loaders
    skip (rows without loss, key None in the sample audit) are summed over the ranks into each
    step's `data_skipped_samples`, and the shards failing their manifest checksum into
    `data_checksum_mismatches` (per rank that opened them)."""
    damaged = tmp_path / "shards"
    shutil.copytree(shards, damaged)
    for shard in damaged.glob("train-*.tar"):
        shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2])
    config = write_config(tmp_path, damaged, steps=3, record_samples=True)
    # unpacked rows: a skipped sample leaves an empty row (key None); packed rows just take the
    # next document (tests/data_pipeline/test_packed_loader.py counts those)
    config.write_text(config.read_text().replace("num_workers: 1", "num_workers: 1\n  on_corrupt: skip\n  packing: false"))
    codes = run_ranks_with_faults(config, tmp_path / "logs", {})
    assert codes == [0] * WORLD, read_logs(tmp_path / "logs")
    run_dir = tmp_path / "run"
    audits = [[json.loads(line) for line in (run_dir / f"samples_rank{rank:05d}.jsonl").read_text().splitlines()]
              for rank in range(WORLD)]
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3]
    for record in records:
        skipped_keys = sum(key is None for audit in audits for line in audit if line["step"] <= record["step"]
                           for key in line["keys"])
        assert record["data_skipped_samples"] == skipped_keys
    assert records[-1]["data_skipped_samples"] > 0
    assert 1 <= records[-1]["data_checksum_mismatches"] <= 3 * WORLD


def test_fault_settings_are_validated_with_the_key_named(tmp_path):
    from pretrain.config import TrainConfig, load_run_config
    from pretrain.errors import ConfigError

    assert (TrainConfig().collective_timeout_s, TrainConfig().max_bad_steps) == (600.0, 5)
    config = write_config(tmp_path, tmp_path / "shards")
    for override, message in (("train.collective_timeout_s=0", "train.collective_timeout_s=0.0: must be a finite"),
                              ("train.collective_timeout_s=.inf", "train.collective_timeout_s"),
                              ("train.max_bad_steps=0", "train.max_bad_steps=0: must be >= 1")):
        with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
            load_run_config(config, [override])
