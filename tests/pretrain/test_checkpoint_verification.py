"""Resume-time checkpoint verification shared by the ranks: every file is hashed by exactly one
rank, and a damaged file found by any rank is reported by every rank with the same message."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "context_parallel"))
from spawn_ranks import run_ranks  # noqa: E402

from pretrain.checkpoint import verify_checkpoint, write_manifest  # noqa: E402
from pretrain.errors import CheckpointError  # noqa: E402

FILES = [f"shard_{index}.pt" for index in range(5)]


def make_checkpoint(directory: Path) -> Path:
    directory.mkdir()
    for index, name in enumerate(FILES):
        (directory / name).write_bytes(bytes(range(index, index + 200)) * (index + 1))
    write_manifest(directory, {"step": 7})
    return directory


def verify_as_rank(rank, world_size, directory):
    from pretrain.checkpoint import verify_checkpoint_on_all_ranks

    try:
        return "ok", verify_checkpoint_on_all_ranks(Path(directory))["step"]
    except CheckpointError as error:
        return "error", str(error)


def test_parts_cover_every_file_once(tmp_path):
    directory = make_checkpoint(tmp_path / "step_7")
    for world in (1, 2, 3, 7):
        damaged_seen = []
        for name in FILES:
            original = (directory / name).read_bytes()
            (directory / name).write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
            failing = []
            for rank in range(world):
                try:
                    verify_checkpoint(directory, part=(rank, world))
                except CheckpointError as error:
                    assert name in str(error)
                    failing.append(rank)
            (directory / name).write_bytes(original)
            damaged_seen.append(failing)
        assert all(len(failing) == 1 for failing in damaged_seen), (world, damaged_seen)


@pytest.mark.parametrize("damaged", [0, 1], ids=["file-of-rank0", "file-of-rank1"])
def test_every_rank_reports_the_damage_any_rank_found(tmp_path, damaged):
    directory = make_checkpoint(tmp_path / "step_7")
    target = directory / sorted(FILES)[damaged]          # with 2 ranks: hashed by rank `damaged`
    target.write_bytes(target.read_bytes()[:-3])
    results = run_ranks(verify_as_rank, 2, str(directory))
    assert [status for status, _ in results] == ["error", "error"]
    assert results[0][1] == results[1][1] and f"{target}: size/sha256 differ" in results[0][1]


def test_an_intact_checkpoint_passes_on_every_rank(tmp_path):
    directory = make_checkpoint(tmp_path / "step_7")
    assert run_ranks(verify_as_rank, 2, str(directory)) == [("ok", 7), ("ok", 7)]


def test_files_and_names_are_on_disk_before_the_manifest_and_latest_name_them(tmp_path, monkeypatch):
    """The order a node crash needs: every file and directory fsynced (fsync_tree, which each rank
    runs after its writes), then the manifest fsynced and renamed and its directory fsynced, then
    `latest` likewise. Recorded from the real os calls."""
    import os

    from pretrain.checkpoint import fsync_tree, write_latest_marker

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), real_replace(a, b))[1])
    root = tmp_path / "checkpoints"
    directory = root / "step_00000007"
    (directory / "nested").mkdir(parents=True)
    for name in FILES:
        (directory / name).write_bytes(b"x" * 100)
    (directory / "nested" / "optim.pt").write_bytes(b"y" * 10)
    fsync_tree(directory)
    write_manifest(directory, {"step": 7})
    write_latest_marker(root, "step_00000007")
    synced = [path for kind, path in events if kind == "fsync"]
    order = [path if kind == "fsync" else f"replace:{path}" for kind, path in events]
    for path in [*(str(directory / n) for n in FILES), str(directory / "nested" / "optim.pt"),
                 str(directory / "nested"), str(directory)]:
        assert path in synced and order.index(path) < order.index(f"replace:{directory / 'manifest.json'}")
    manifest_replaced = order.index(f"replace:{directory / 'manifest.json'}")
    assert str(directory) in order[manifest_replaced + 1:]                 # the manifest's name is durable
    latest_replaced = order.index(f"replace:{root / 'latest'}")
    assert manifest_replaced < latest_replaced and order[-1] == str(root)   # and then `latest`'s


def test_a_peer_renaming_its_temp_file_during_fsync_tree_is_not_a_write_failure(tmp_path, monkeypatch):
    """Ranks run fsync_tree while a peer may still be between torch.save(tmp) and os.replace:
    the listed temp file is gone when this rank opens it. That must not fail the checkpoint."""
    import builtins
    import os

    import pretrain.checkpoint as checkpoint

    directory = tmp_path / "step_00000007"
    directory.mkdir()
    (directory / "train_state_rank00000.pt").write_bytes(b"x" * 100)
    peer_tmp = directory / "train_state_rank00001.pt.tmp"
    peer_tmp.write_bytes(b"y" * 100)
    opened = []

    def open_after_the_peer_renamed(path, *args, **kwargs):
        opened.append(Path(path).name)
        if Path(path) == peer_tmp:
            os.replace(peer_tmp, directory / "train_state_rank00001.pt")    # the peer's os.replace
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "open", open_after_the_peer_renamed, raising=False)
    checkpoint.fsync_tree(directory)
    assert opened == ["train_state_rank00000.pt", "train_state_rank00001.pt.tmp"]
    assert (directory / "train_state_rank00001.pt").read_bytes() == b"y" * 100
