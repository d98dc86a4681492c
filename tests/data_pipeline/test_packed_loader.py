"""Packed loaders (data.packing) on the bundled real data: rows of whole documents, every
document once per epoch and on one rank only, full train rows (across epoch ends), document
starts where each document begins, exact resume from a row that cut its last document, and a
finite repeatable validation pass."""
import collections
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_pipeline.config import DataConfig
from data_pipeline.errors import ConfigError, LoaderStateError
from data_pipeline.loader import build_loader
from data_pipeline.manifest import read_manifest

HELPER = Path(__file__).with_name("loader_process.py")
REPO = Path(__file__).resolve().parents[2]
IGNORE = -100


def _keys(row_key):
    return [] if row_key is None else row_key.split("+")


def _rows_by_worker_epoch(loader, epochs=1):
    """Walk a packed train loader (micro-batch 1) until every worker has begun epoch `epochs`;
    -> ({worker: [keys of the documents it began in epoch 0 .. epochs-1, in order]}, batches)."""
    keys, batches = collections.defaultdict(list), []
    stream = iter(loader)
    while min(loader.worker_epochs) < epochs:
        worker, epoch_before = loader.next_worker, loader.worker_epochs[loader.next_worker]
        batches.append(next(stream))
        if epoch_before >= epochs:
            continue                                              # this worker is already past
        row_keys = _keys(loader.last_batch_keys[0])
        if loader.worker_epochs[worker] == epochs:                # the row went on into the next epoch
            row_keys = row_keys[:len(row_keys) - loader.worker_cursors[worker]]
        keys[worker] += row_keys
    return keys, batches


def _split_keys(build, split):
    shards = read_manifest(build)["splits"][split]["shards"]
    return {f"{shard['name']}:{n}:0" for shard in shards for n in range(len(shard["sample_tokens"]))}


@pytest.mark.parametrize("modality", ["protein", "molecules"])
def test_every_document_once_per_epoch_on_one_rank_and_rows_full(modality, demo_builds):
    cfg = DataConfig(modality=modality, shards=str(demo_builds[modality]), num_workers=2, seed=3)
    assert cfg.packing is None                                    # the default packs these
    seen = []
    for rank in range(2):
        loader = build_loader(cfg, "train", 512, 1, dp_rank=rank, dp_size=2)
        assert loader.packing
        keys, batches = _rows_by_worker_epoch(loader)
        per_rank = [key for worker_keys in keys.values() for key in worker_keys]
        for batch in batches:                                     # train rows are always full
            assert not (batch["input_ids"] == loader.tokenizer.pad_id).any()
            assert (batch["labels"] != IGNORE).float().mean() > 0.97
        assert len(per_rank) == len(set(per_rank))                # once per epoch on this rank
        seen.append(set(per_rank))
    assert not seen[0] & seen[1]                                  # no document on both ranks
    assert seen[0] | seen[1] == _split_keys(demo_builds[modality], "train")   # nothing dropped


def test_document_starts_mark_every_document_and_the_padding(demo_builds):
    """Molecule documents begin with [BEG] and hold no other one: the starts are exactly the
    [BEG] positions plus the first padding position."""
    cfg = DataConfig(modality="molecules", shards=str(demo_builds["molecules"]), num_workers=1)
    loader = build_loader(cfg, "validation", 2048, 2)
    tok, documents, inner_ends = loader.tokenizer, 0, 0
    for batch in loader:
        for ids, starts, labels in zip(batch["input_ids"], batch["document_starts"], batch["labels"]):
            assert starts.dtype == torch.bool and starts[0]
            padded = ids == tok.pad_id
            first_pad = padded & ~torch.cat([torch.tensor([False]), padded[:-1]])
            assert torch.equal(starts, (ids == tok.beg_id) | first_pad | (torch.arange(len(ids)) == 0))
            # a document that ends inside the row predicts nothing after its last token (the row's
            # last document may be cut at S, and then keeps its real next-token label)
            ends_inside = torch.cat([starts[1:], torch.tensor([False])]) & ~padded
            assert (labels[ends_inside] == IGNORE).all()
            documents += int((ids == tok.beg_id).sum())
            inner_ends += int(ends_inside.sum())
    assert documents >= 36 and inner_ends > 0                     # several documents per row


def test_protein_documents_restart_positions_and_share_of_loss_tokens(demo_builds):
    cfg = DataConfig(modality="protein", shards=str(demo_builds["protein"]), num_workers=1)
    packed = build_loader(cfg, "train", 8192, 1)
    unpacked = build_loader(dataclasses.replace(cfg, packing=False), "train", 8192, 1)
    shares = {}
    for name, loader in (("packed", packed), ("unpacked", unpacked)):
        batches = [batch for _, batch in zip(range(8), loader)]
        labels = torch.cat([b["labels"] for b in batches])
        shares[name] = (labels != IGNORE).float().mean().item()
        for b in batches:
            starts = b["document_starts"][0]
            assert (b["position_ids"][0][starts & (b["input_ids"][0] != loader.tokenizer.pad_id)] == 0).all()
            assert (b["input_ids"][0][starts & (b["input_ids"][0] != loader.tokenizer.pad_id)]
                    == loader.tokenizer.cls_id).all()
    assert shares["packed"] > 0.99 and shares["unpacked"] < 0.5, shares


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["protein", "molecules"])
def test_packed_resume_in_a_fresh_process_is_exact(modality, demo_builds, tmp_path):
    """Stop right after a row that cut its last document; the resumed stream crosses every
    worker's epoch end."""
    cfg = DataConfig(modality=modality, shards=str(demo_builds[modality]), num_workers=3, seed=11)
    args = dict(split="train", context_len=1024, micro_batch_size=2, dp_rank=1, dp_size=2, seed=2)
    loader = build_loader(cfg, **args)
    stream = iter(loader)
    while True:
        batch = next(stream)
        cut = batch["labels"][-1, -1].item() != IGNORE          # the last document goes on past S
        if cut and max(loader.worker_epochs) == 0 and len(set(loader.worker_cursors)) > 1:
            break
    state = loader.state_dict()
    expected = []
    while min(loader.worker_epochs) == 0 or len(expected) < 5:   # cross every worker's epoch end
        expected.append(next(stream))
    state_path = tmp_path / "state.json"
    state_path.write_text(json.dumps({"cfg": dataclasses.asdict(cfg), "state": state, **args}))
    out = tmp_path / "resumed.pt"
    proc = subprocess.run([sys.executable, str(HELPER), "resume", str(state_path), str(len(expected)), str(out)],
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for want, got in zip(expected, torch.load(out), strict=True):
        for name in ("input_ids", "labels", "position_ids", "document_starts"):
            assert torch.equal(want[name], got[name]), name
    assert not torch.equal(next(iter(build_loader(cfg, **args)))["input_ids"], expected[0]["input_ids"])


def test_packed_validation_is_finite_repeatable_and_complete(demo_builds):
    cfg = DataConfig(modality="protein", shards=str(demo_builds["protein"]), num_workers=2)
    keys = []
    for rank in range(3):
        loader = build_loader(cfg, "validation", 1024, 2, dp_rank=rank, dp_size=3)
        first = []
        for batch in loader:
            first.append(batch["input_ids"])
            keys += [k for row in loader.last_batch_keys for k in _keys(row)]
        second = [batch["input_ids"] for batch in loader]
        assert first and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert sorted(keys) == sorted(_split_keys(demo_builds["protein"], "validation"))


def test_dna_packs_only_where_a_stored_window_is_shorter_than_the_context(demo_builds):
    """The demo genome is stored in windows of 4096 bases, the last of a record shorter (2688)."""
    cfg = DataConfig(modality="dna", shards=str(demo_builds["dna"]))
    assert not build_loader(cfg, "train", 1024, 2).packing
    assert build_loader(cfg, "train", 4096, 2).packing
    assert not build_loader(dataclasses.replace(cfg, packing=False), "train", 4096, 2).packing


def test_packed_and_unpacked_states_do_not_mix_and_damage_is_named(demo_builds):
    cfg = DataConfig(modality="protein", shards=str(demo_builds["protein"]), num_workers=2)
    packed = build_loader(cfg, "train", 256, 2)
    unpacked = build_loader(dataclasses.replace(cfg, packing=False), "train", 256, 2)
    with pytest.raises(LoaderStateError, match="written without packing.*data.packing=false"):
        packed.load_state_dict(unpacked.state_dict())
    with pytest.raises(LoaderStateError, match="written with packing.*data.packing=true"):
        unpacked.load_state_dict(packed.state_dict())
    damaged = dict(packed.state_dict(), worker_consumed_items=[10 ** 6, 0])
    with pytest.raises(LoaderStateError, match="worker_consumed_items.*corrupt"):
        packed.load_state_dict(damaged)
    with pytest.raises(ConfigError, match="data.packing='yes'"):
        DataConfig(modality="protein", shards="x", packing="yes").validate()
    with pytest.raises(TypeError, match="packed loader has no fixed number"):
        len(packed)


def test_packed_rows_skip_damaged_samples_count_them_and_refuse_an_unreadable_split(demo_builds, tmp_path):
    """data.on_corrupt=skip: a packed row goes on with the next document past a damaged sample,
    every skipped one is counted, rows stay full; a split of which nothing is readable is one
    clear error, not an endless loop."""
    import shutil
    import warnings

    damaged = tmp_path / "half"
    shutil.copytree(demo_builds["protein"], damaged)
    for shard in damaged.glob("train-*.tar"):                 # every shard cut to half its length
        shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2])
    cfg = DataConfig(modality="protein", shards=str(damaged), num_workers=1, on_corrupt="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loader = build_loader(cfg, "train", 2048, 1)
        documents = []
        for _, batch in zip(range(40), loader):
            assert not (batch["input_ids"] == loader.tokenizer.pad_id).any()     # full rows
            documents += _keys(loader.last_batch_keys[0])
    assert loader.worker_epochs == [0]
    assert loader.skipped_samples > 0                         # every item consumed: a document or a skip
    assert loader.skipped_samples == loader.worker_cursors[0] - len(documents)

    unreadable = tmp_path / "empty"
    shutil.copytree(demo_builds["protein"], unreadable)
    for shard in unreadable.glob("train-*.tar"):
        shard.write_bytes(shard.read_bytes()[:512])            # the first tar header only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loader = build_loader(dataclasses.replace(cfg, shards=str(unreadable)), "train", 2048, 1)
        with pytest.raises(ConfigError, match="no readable sample"):
            next(iter(loader))
