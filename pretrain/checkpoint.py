"""Atomic, verifiable training checkpoints: DeepSpeed shards + one TrainState per rank.

Layout of `<run>/checkpoints/`:

    step_00000100/            DeepSpeed files (mp_rank_*, zero_pp_rank_* ...),
                              train_state_rank00000.pt ..., manifest.json (size + sha256 of each)
    latest                    text: the tag of the newest complete checkpoint

Order of a save: every rank writes its DeepSpeed shards and its train state and fsyncs the
directory's files; the ranks agree that all writes succeeded; rank 0 writes the manifest, then
moves `latest` (temp file + fsync + os.replace + fsync of the directory); the ranks agree again;
then old checkpoints beyond `keep` are deleted. A crash
anywhere before the marker moves (a node's power loss included: the data is on disk before
the marker names it) leaves the previous checkpoint as `latest`, whole; the torn
directory is removed when that tag is written again. A write that fails on any rank (disk
full, quota, I/O error) makes every rank raise CheckpointWriteError; rank 0 removes the partial
directory first, and `latest` and the previous checkpoints are untouched.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from data_pipeline.shards import sha256_file
from pretrain.errors import CheckpointError, CheckpointWriteError

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
    fsync_directory(root)


def read_latest_tag(root: Path) -> Optional[str]:
    marker = Path(root) / LATEST_MARKER
    if not marker.is_file():
        return None
    tag = marker.read_text().strip()
    return tag or None


def fsync_directory(path: Path) -> None:
    """Make the names in `path` durable (a rename or new file is on disk only once its directory is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    """fsync every file below `directory`, then every directory: so that a node crash after
    `latest` has moved cannot leave it naming data that never reached the disk. Every rank runs
    this after its own writes (on a shared file system only the writer's client can flush what it
    wrote); files another rank already flushed cost one cheap syscall.

    Other ranks may still be writing: an entry that vanishes between the listing and its fsync
    (a peer's temp file renamed to its final name) is skipped, not a write failure; its writer
    fsyncs the final name in its own pass."""
    entries = sorted(directory.rglob("*"))
    for path in entries:
        if path.is_file():
            try:
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
            except FileNotFoundError:
                continue
    for path in reversed(entries):            # deepest first, the top directory last
        if path.is_dir():
            fsync_directory(path)
    fsync_directory(directory)


def write_manifest(checkpoint_dir: Path, facts: dict) -> Path:
    files = {}
    for path in sorted(p for p in checkpoint_dir.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        files[str(path.relative_to(checkpoint_dir))] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = checkpoint_dir / MANIFEST_NAME
    tmp = manifest.with_name(MANIFEST_NAME + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(json.dumps({**facts, "files": files}, indent=1))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, manifest)
    fsync_directory(checkpoint_dir)
    return manifest


def verify_checkpoint(checkpoint_dir: Path, part: tuple[int, int] = (0, 1)) -> dict:
    """Check every file against the manifest; returns the manifest or raises CheckpointError.

    `part=(k, n)` hashes only every n-th file from the k-th (in name order), so n ranks can
    share the work (`verify_checkpoint_on_all_ranks`)."""
    manifest_path = checkpoint_dir / MANIFEST_NAME
    earlier = (f"resume from an earlier checkpoint: write the tag of a complete one (a step_* directory "
               f"with a {MANIFEST_NAME}) into {checkpoint_dir.parent / LATEST_MARKER}")
    if not manifest_path.is_file():
        raise CheckpointError(f"{checkpoint_dir}: no {MANIFEST_NAME}; the checkpoint was not completed. "
                              f"Point {checkpoint_dir.parent / LATEST_MARKER} at an earlier complete checkpoint")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        expected_sizes = {name: (int(entry["bytes"]), str(entry["sha256"])) for name, entry in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{manifest_path}: unreadable ({type(error).__name__}: {error}); the checkpoint "
                              f"is damaged, {earlier}") from None
    for name, (expected_bytes, expected_sha) in sorted(expected_sizes.items())[part[0]::part[1]]:
        path = checkpoint_dir / name
        if not path.is_file():
            raise CheckpointError(f"{path}: listed in {manifest_path.name} but missing; the checkpoint is damaged, "
                                  f"{earlier}")
        size = path.stat().st_size
        if size != expected_bytes or sha256_file(path) != expected_sha:
            raise CheckpointError(f"{path}: size/sha256 differ from {manifest_path.name} ({size} bytes, expected "
                                  f"{expected_bytes}); the checkpoint is damaged, {earlier}")
    return manifest


def verify_checkpoint_on_all_ranks(checkpoint_dir: Path) -> dict:
    """`verify_checkpoint` with the files split over the ranks, so each file is read once per
    resume instead of once per rank; every rank raises the same error if any part is damaged."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return verify_checkpoint(checkpoint_dir)
    rank, world = dist.get_rank(), dist.get_world_size()
    manifest, error = None, None
    try:
        manifest = verify_checkpoint(checkpoint_dir, part=(rank, world))
    except CheckpointError as found:
        error = str(found)
    errors = [None] * world
    dist.all_gather_object(errors, error)
    first = next((message for message in errors if message is not None), None)
    if first is not None:
        raise CheckpointError(first)
    return manifest


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _free_space(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 2**20:.1f} MiB"
    except OSError:
        return "unknown space"


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
        self._agree_or_raise(directory, self._write_rank_files(engine, train_state, directory))
        failure = None
        if self.rank == 0:
            try:
                write_manifest(directory, {"tag": tag, **facts})
                write_latest_marker(self.root, tag)
            except (OSError, RuntimeError) as error:
                failure = error
        self._agree_or_raise(directory, failure)  # every rank has finished writing; `latest` has moved
        if self.rank == 0:
            self._prune(keep_tag=tag)
        return directory

    def _write_rank_files(self, engine, train_state, directory: Path) -> Optional[BaseException]:
        """This rank's DeepSpeed shards and train state; returns the write error, if any.

        A failed write inside torch.save surfaces as a RuntimeError of its zip writer
        ("unexpected pos ..."), not as an OSError, so both are caught."""
        try:
            engine.save_checkpoint(str(self.root), tag=tag_for_step(train_state.step), client_state={},
                                   save_latest=False)
        except (OSError, RuntimeError) as error:
            if isinstance(error, dist.DistError):
                raise                             # a peer died or timed out: not a write failure
            # DeepSpeed 0.19's save runs all its collectives before its first file write and ends
            # with a barrier; ranks whose writes succeeded wait in it, so join it here.
            _barrier()
            return error
        state_path = directory / train_state_name(self.rank)
        tmp = state_path.with_name(state_path.name + ".tmp")
        try:
            torch.save(train_state.state_dict(), tmp)
            os.replace(tmp, state_path)
            fsync_tree(directory)                 # durable before the ranks agree and `latest` moves
        except (OSError, RuntimeError) as error:
            return error
        return None

    def _agree_or_raise(self, directory: Path, failure: Optional[BaseException]) -> None:
        """Collective: if the write failed on any rank, rank 0 removes the partial directory and
        every rank raises the same CheckpointWriteError (the barrier of a successful save)."""
        from pretrain.parallel import ranks_with

        failed = ranks_with(failure is not None)
        if not failed:
            return
        if self.rank == 0:
            if read_latest_tag(self.root) != directory.name:
                shutil.rmtree(directory, ignore_errors=True)
            (self.root / f".{LATEST_MARKER}.tmp").unlink(missing_ok=True)
        _barrier()
        latest = read_latest_tag(self.root)
        kept = (f"{self.root / LATEST_MARKER} still names {latest}, which a restart resumes from"
                if latest else "there is no earlier checkpoint; a restart begins at step 0")
        cause = (f"rank {self.rank}: {type(failure).__name__}: {failure}" if failure is not None
                 else f"the write failed on rank(s) {', '.join(map(str, failed))}")
        raise CheckpointWriteError(f"{directory}: could not write the checkpoint ({cause}; "
                                   f"{_free_space(self.root)} free there). Free space (or quota) or point "
                                   f"train.out_dir elsewhere; the partial directory was removed and {kept}")

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
            verify_checkpoint_on_all_ranks(directory)
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
