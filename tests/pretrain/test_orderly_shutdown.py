"""Every way a run ends (done, preempted, error) destroys its process groups and joins its threads.

A rank that leaves gloo / TCPStore threads to interpreter exit can abort there (SIGABRT,
`terminate called without an active exception`: tests/RELIABILITY.md). Single-process runs go
through the real trainer in this process (a one-rank group on an in-memory store, megatron-core
groups, a DeepSpeed engine, TensorBoard's writer thread); the 2-rank gloo runs check the same in
real rank processes, each printing its state after `main` returned or raised.
"""
import ast
import threading
from importlib import metadata
from pathlib import Path

import pytest
import torch.distributed as dist
import yaml

from trainer_processes import REPO, read_logs, run_ranks

from pretrain.environment import read_environment_reports

# Runs `main` of the trainer, then prints what is left of the distributed state and the threads.
REPORT_AFTER_MAIN = ("import sys, threading, torch.distributed as _d, pretrain.train as _t\n"
                     "_main = _t.main\n"
                     "def main(argv):\n"
                     "    try:\n"
                     "        return _main(argv)\n"
                     "    finally:\n"
                     "        ps = sys.modules.get('megatron.core.parallel_state')\n"
                     "        left = [(t.name, t.daemon) for t in threading.enumerate() if t is not threading.main_thread()]\n"
                     "        print('AFTER_MAIN', repr((_d.is_initialized(), bool(ps and ps.model_parallel_is_initialized()), left)), flush=True)\n"
                     "_t.main = main\n")
FAIL_AT_STEP_2 = ("import pretrain.train as _t2\n"
                  "_verdict = _t2._skip_verdict\n"
                  "def _fail(totals, parallel, step):\n"
                  "    if step == 2:\n"
                  "        raise RuntimeError('injected failure at step 2')\n"
                  "    return _verdict(totals, parallel, step)\n"
                  "_t2._skip_verdict = _fail\n")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from data_pipeline.demo import build_demo_shards

    return build_demo_shards(tmp_path_factory.mktemp("shards") / "protein", "protein")


def write_config(path: Path, shards: Path, zero_stage: int, world: int, tensorboard: bool = False) -> Path:
    config = {
        "model": {"base": str(REPO / "configs/models/protein_tiny.yaml"), "d_model": 32, "num_blocks": 2},
        "data": {"modality": "protein", "shards": str(shards), "num_workers": 1},
        "train": {"out_dir": str(path.parent / "run"), "lr": 3e-3, "zero_stage": zero_stage, "dtype": "fp32",
                  "checkpoint_every": 0, "eval_every": 0, "eval_batches": 1, "log_every": 1, "max_steps": 3,
                  "progress": False, "tensorboard": tensorboard},
        "curriculum": {"stages": [{"context_len": 64, "micro_batch_size": 2, "tokens": 64 * 2 * world * 4}]},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def distributed_state() -> tuple:
    import sys

    ps = sys.modules.get("megatron.core.parallel_state")
    ds_comm = sys.modules.get("deepspeed.comm.comm")
    return (dist.is_initialized(), bool(ps and ps.model_parallel_is_initialized()),
            bool(ds_comm and ds_comm.is_initialized()))


@pytest.mark.parametrize("ending", ["done", "preempted", "error"])
def test_a_single_process_run_tears_down_on_every_exit_path(ending, shards, tmp_path, monkeypatch, capsys):
    import pretrain.preemption
    import pretrain.train
    from pretrain.config import load_run_config

    config = write_config(tmp_path / "config.yaml", shards, zero_stage=3, world=1, tensorboard=True)
    if ending == "preempted":
        monkeypatch.setattr(pretrain.preemption, "stop_requested", lambda: True)
    if ending == "error":
        def fail(totals, parallel, step):
            raise RuntimeError("injected failure")
        monkeypatch.setattr(pretrain.train, "_skip_verdict", fail)
    threads_before = set(threading.enumerate())
    cfg = load_run_config(str(config), ["train.progress=true", "train.progress_interval_s=0.001"])
    if ending == "error":
        with pytest.raises(RuntimeError, match="injected failure"):
            pretrain.train.run_training(cfg)
    else:
        result = pretrain.train.run_training(cfg)
        assert result.status == {"done": "completed", "preempted": "preempted"}[ending]
        assert result.step == (3 if ending == "done" else 1)
    assert distributed_state() == (False, False, False)
    assert [t.name for t in threading.enumerate() if t not in threads_before] == []
    assert any((tmp_path / "run" / "tensorboard").iterdir())     # the writer thread existed and wrote
    err = capsys.readouterr().err                                 # not a terminal: plain progress lines
    last_line = {"done": "train: 3/3 step (100%)", "preempted": "train: 1/3 step (33%)", "error": "train: 0/3 step (0%)"}
    assert "\r" not in err and last_line[ending] in err.splitlines()[-1]   # the closing line, on every path
    [report] = read_environment_reports(tmp_path / "run")         # the run's copy of `bioxlstm env`
    assert report["packages"]["torch"] == metadata.version("torch") and report["problems"] == []


@pytest.mark.slow
@pytest.mark.parametrize("ending,zero_stage,preamble,codes", [
    ("done", 3, "", [0, 0]),               # where the exit-time abort was seen: a finished ZeRO-3 run
    ("error", 1, FAIL_AT_STEP_2, [1, 1]),  # (preempted: in one process above; 2-rank runs cost ~20-45 s each)
], ids=["done-zero3", "error"])
def test_two_gloo_ranks_tear_down_on_every_exit_path(ending, zero_stage, preamble, codes, shards, tmp_path):
    config = write_config(tmp_path / "config.yaml", shards, zero_stage=zero_stage, world=2)
    logs = tmp_path / "logs"
    assert run_ranks(2, ["--config", config], logs, preamble=preamble + REPORT_AFTER_MAIN) == codes, read_logs(logs)
    for rank in range(2):
        text = (logs / f"rank{rank}.log").read_text()
        line = next(line for line in text.splitlines() if line.startswith("AFTER_MAIN"))
        initialized, model_parallel, threads = ast.literal_eval(line.removeprefix("AFTER_MAIN "))
        assert (initialized, model_parallel) == (False, False), text
        assert [name for name, daemon in threads if not daemon] == [], text
        assert "terminate called" not in text
    if ending == "error":
        assert "injected failure at step 2" in (logs / "rank0.log").read_text()


def test_a_session_leaves_a_group_its_caller_created_and_joins_its_own_threads():
    from pretrain.parallel import process_group_session

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        release = threading.Event()
        with process_group_session(join_timeout_s=30) as session:
            worker = threading.Thread(target=release.wait, name="session-worker")
            worker.start()
            session.callback(release.set)               # closed first, so the join finds it ending
        assert not worker.is_alive()
        assert dist.is_initialized()                    # the caller's group: the caller destroys it
    finally:
        dist.destroy_process_group()
