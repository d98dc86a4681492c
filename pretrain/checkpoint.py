"""Atomic, verifiable training checkpoints: DeepSpeed shards + one TrainState per rank.

Layout of `<run>/checkpoints/`:

    step_00000100/            DeepSpeed files (mp_rank_*, zero_pp_rank_* ...),
                              train_state_rank00000.pt ..., manifest.json (size + sha256 of each)
    latest                    text: the tag of the newest complete checkpoint

Order of a save: every rank writes its DeepSpeed shards and its train state; barrier; rank 0
writes the manifest, then moves `latest` (temp file + os.replace); then old checkpoints beyond
`keep` are deleted. A crash anywhere before the marker moves leaves the previous checkpoint
as `latest`, whole; the torn directory is removed when that tag is written again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from pretrain.errors import CheckpointError

LATEST_MARKER = "latest"
MANIFEST_NAME = "manifest.json"
TAG_PREFIX = "step_"


def tag_for_step(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def train_state_name(rank: int) -> str:
    return f"train_state_rank{rank:05d}.pt"


def write_latest_marker(root: Path, tag: str) -> None:
    """Point `latest` at `tag` atomically: a reader sees the old or the new tag, never a torn file."""
    tmp = root / f".{LATEST_MARKER}.tmp"
    with open(tmp, "w") as handle:
        handle.write(tag + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, root / LATEST_MARKER)


def read_latest_tag(root: Path) -> Optional[str]:
    marker = Path(root) / LATEST_MARKER
    if not marker.is_file():
        return None
    tag = marker.read_text().strip()
    return tag or None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(checkpoint_dir: Path, facts: dict) -> Path:
    files = {}
    for path in sorted(p for p in checkpoint_dir.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        files[str(path.relative_to(checkpoint_dir))] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = checkpoint_dir / MANIFEST_NAME
    tmp = manifest.with_name(MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps({**facts, "files": files}, indent=1))
    os.replace(tmp, manifest)
    return manifest


def verify_checkpoint(checkpoint_dir: Path) -> dict:
    """Check every file against the manifest; returns the manifest or raises CheckpointError."""
    manifest_path = checkpoint_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise CheckpointError(f"{checkpoint_dir}: no {MANIFEST_NAME}; the checkpoint was not completed. "
                              f"Point {checkpoint_dir.parent / LATEST_MARKER} at an earlier complete checkpoint")
    manifest = json.loads(manifest_path.read_text())
    for name, expected in manifest["files"].items():
        path = checkpoint_dir / name
        if not path.is_file():
            raise CheckpointError(f"{path}: listed in {manifest_path.name} but missing; the checkpoint is damaged, "
                                  "resume from an earlier one (edit the `latest` marker)")
        size = path.stat().st_size
        if size != expected["bytes"] or _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"{path}: size/sha256 differ from {manifest_path.name} ({size} bytes, expected "
                                  f"{expected['bytes']}); the checkpoint is damaged, resume from an earlier one "
                                  "(edit the `latest` marker)")
    return manifest


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


class CheckpointManager:
    """Saves and loads checkpoints of one run directory (see module doc for the protocol)."""

    def __init__(self, root: str | Path, rank: int, keep: int):
        self.root = Path(root)
        self.rank = rank
        self.keep = keep

    def save(self, engine, train_state, facts: dict) -> Path:
        tag = tag_for_step(train_state.step)
        directory = self.root / tag
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if directory.exists() and read_latest_tag(self.root) != tag:
                shutil.rmtree(directory)          # torn leftover of a crashed save of this step
        _barrier()
        engine.save_checkpoint(str(self.root), tag=tag, client_state={}, save_latest=False)
        state_path = directory / train_state_name(self.rank)
        tmp = state_path.with_name(state_path.name + ".tmp")
        torch.save(train_state.state_dict(), tmp)
        os.replace(tmp, state_path)
        _barrier()                                # every rank has finished writing
        if self.rank == 0:
            write_manifest(directory, {"tag": tag, **facts})
            write_latest_marker(self.root, tag)
            self._prune(keep_tag=tag)
        _barrier()
        return directory

    def _prune(self, keep_tag: str) -> None:
        complete = sorted(p for p in self.root.glob(f"{TAG_PREFIX}*")
                          if p.is_dir() and (p / MANIFEST_NAME).is_file() and p.name <= keep_tag)
        for old in complete[:-self.keep]:
            if old.name != keep_tag:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, engine, tag: str, checkpoint_root: Optional[Path] = None, load_optimizer: bool = True,
             verify: bool = True) -> dict:
        """Load DeepSpeed state into `engine`; returns this rank's train-state dict."""
        root = Path(checkpoint_root) if checkpoint_root is not None else self.root
        directory = root / tag
        if verify:
            verify_checkpoint(directory)
        state_path = directory / train_state_name(self.rank)
        if not state_path.is_file():
            raise CheckpointError(f"{state_path}: missing; the checkpoint was written by fewer ranks. "
                                  "Resume with the world size it was written with")
        path, _ = engine.load_checkpoint(str(root), tag=tag, load_optimizer_states=load_optimizer,
                                         load_lr_scheduler_states=False, load_module_only=not load_optimizer)
        if path is None:
            raise CheckpointError(f"{directory}: DeepSpeed could not load it (world size or ZeRO stage differs "
                                  "from the run that wrote it?)")
        return torch.load(state_path, map_location="cpu", weights_only=False)


def resolve_checkpoint(path: str | Path) -> tuple[Path, str]:
    """(checkpoints root, tag) for `--from`: a run dir, its checkpoints/ dir, or one tag dir."""
    path = Path(path)
    for root in (path / "checkpoints", path):
        tag = read_latest_tag(root)
        if tag is not None:
            return root, tag
    if (path / MANIFEST_NAME).is_file():
        return path.parent, path.name
    raise CheckpointError(f"{path}: not a checkpoint; pass a run directory, its checkpoints/ directory, or a "
                          "checkpoints/step_XXXXXXXX directory")
