"""Loader: rank x worker split with equal counts, exact resume in a fresh process, validation pass."""
import collections
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_pipeline.config import DataConfig
from data_pipeline.errors import ConfigError, LoaderStateError
from data_pipeline.loader import build_loader
from data_pipeline.unigram import unigram_cross_entropy

HELPER = Path(__file__).with_name("loader_process.py")
REPO = Path(__file__).resolve().parents[2]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)
    return env



@pytest.mark.slow
def test_two_ranks_two_workers_see_every_sample_once_per_epoch(demo_builds, tmp_path):
    from launchers.local_launch import rendezvous_store

    out, store = tmp_path / "result.json", rendezvous_store(2, timeout_s=120)   # held until the ranks end
    procs = [subprocess.Popen([sys.executable, str(HELPER), "epoch", str(rank), "2", str(store.port),
                               str(demo_builds["protein"]), str(out)],
                              env=_env(TORCHELASTIC_USE_AGENT_STORE="True"), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for rank in range(2)]
    for proc in procs:
        output = proc.communicate(timeout=120)[0].decode()
        assert proc.returncode == 0, output
    result = json.loads(out.read_text())
    manifest = json.loads((demo_builds["protein"] / "manifest.json").read_text())
    for split in ("train", "validation"):
        ranks = result[split]
        assert ranks[0]["batches"] == ranks[1]["batches"] > 0  # equal counts: no hang at epoch end
        # workers of a rank consumed equally too (2 workers x batches/2 x micro-batch 2)
        assert all(r["workers"] == [r["batches"] // 2 * 2] * 2 for r in ranks)
        keys = [k for r in ranks for k in r["keys"] if k is not None]
        expected = manifest["splits"][split]["samples"]  # 1800 train / 200 val: divisible or padded
        assert len(keys) == len(set(keys)) == expected  # every sample exactly once
        assert not set(ranks[0]["keys"]) - {None} & set(ranks[1]["keys"])
    assert result["train"][0]["epoch_order"] != result["train"][1]["epoch_order"]


@pytest.mark.slow
@pytest.mark.parametrize("modality,objective", [("dna", "mlm"), ("dna", "clm"), ("protein", "clm"),
                                                ("molecules", "clm")])
def test_resume_in_fresh_process_reproduces_rest_of_stream(modality, objective, demo_builds, tmp_path):
    cfg = DataConfig(modality=modality, shards=str(demo_builds[modality]), objective=objective,
                     num_workers=3, seed=11, packing=False)     # packed resume: test_packed_loader.py
    args = dict(split="train", context_len=64, micro_batch_size=3, dp_rank=1, dp_size=2, seed=2)
    loader = build_loader(cfg, **args)
    stop = len(loader) - 2  # stop two batches before the epoch ends: the resumed run crosses it
    stream = iter(loader)
    for _ in range(stop):
        next(stream)
    state = loader.state_dict()
    assert state["worker_consumed_samples"] != [0, 0, 0]
    expected = [next(stream) for _ in range(5)]
    assert loader.epoch == 1
    state_path = tmp_path / "state.json"
    state_path.write_text(json.dumps({"cfg": dataclasses.asdict(cfg), "state": state, **args}))
    out = tmp_path / "resumed.pt"
    proc = subprocess.run([sys.executable, str(HELPER), "resume", str(state_path), "5", str(out)],
                          env=_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    resumed = torch.load(out)
    for want, got in zip(expected, resumed, strict=True):
        for name in ("input_ids", "labels", "position_ids"):
            assert torch.equal(want[name], got[name]), name
    # and a fresh loader without the state starts elsewhere: the comparison can fail
    assert not torch.equal(next(iter(build_loader(cfg, **args)))["input_ids"], expected[0]["input_ids"])


def test_validation_is_a_finite_repeatable_pass(demo_builds):
    cfg = DataConfig(modality="dna", shards=str(demo_builds["dna"]), num_workers=2)
    loader = build_loader(cfg, "validation", 256, 4, dp_rank=0, dp_size=3)
    first = [b["input_ids"] for b in loader]
    second = [b["input_ids"] for b in loader]
    assert len(first) == len(loader) > 0
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_context_len_change_needs_no_rebuild_and_state_mismatch_is_an_error(demo_builds):
    cfg = DataConfig(modality="protein", shards=str(demo_builds["protein"]))
    short = build_loader(cfg, "train", 32, 2)
    long = build_loader(cfg, "train", 512, 2)
    assert next(iter(short))["input_ids"].shape == (2, 32)
    assert next(iter(long))["input_ids"].shape == (2, 512)
    with pytest.raises(LoaderStateError, match="context_len"):
        long.load_state_dict(short.state_dict())


def test_bad_loader_arguments_are_clear(demo_builds):
    cfg = DataConfig(modality="protein", shards=str(demo_builds["protein"]))
    with pytest.raises(ConfigError, match="dp_rank=2"):
        build_loader(cfg, "train", 64, 2, dp_rank=2, dp_size=2)
    with pytest.raises(ConfigError, match="data.objective"):
        build_loader(dataclasses.replace(cfg, objective="mlm"), "train", 64, 2)
    with pytest.raises(ConfigError, match="unknown data config keys"):
        DataConfig.from_dict({"modality": "dna", "shard": "x"})


def test_unigram_baseline_is_a_cross_entropy(demo_builds):
    cfg = DataConfig(modality="dna", shards=str(demo_builds["dna"]), rc_augment=False)
    loss = unigram_cross_entropy(cfg, 128)
    # four near-uniform bases: just under ln 4, and never below the entropy of a 4-letter source
    assert 1.30 < loss < 1.3863 + 0.01


def test_each_epoch_reshuffles_the_same_items(demo_builds):
    cfg = DataConfig(modality="protein", shards=str(demo_builds["protein"]), num_workers=2, packing=False)
    loader = build_loader(cfg, "train", 64, 4, dp_rank=0, dp_size=2)
    epoch0, epoch1 = loader.epoch_order(0), loader.epoch_order(1)
    # 1800 clusters, 2 ranks x 2 workers x 4 rows = 16 per round: 1792 used, a different 8 left out
    assert epoch0 != epoch1 and len(set(epoch0)) == len(set(epoch1)) == len(epoch0) == 1792
    assert set(epoch0) | set(epoch1) <= set(range(len(loader.items))) and set(epoch0) != set(epoch1)
    assert loader.epoch_order(1) == epoch1  # reproducible from (seed, epoch) alone
