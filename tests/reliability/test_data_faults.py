"""Data faults: a disk that fills up while a build writes, shards damaged while a loader reads.

Disk full: a file wrapper lets a byte budget reach the disk, then fails every write with
ENOSPC (placed in the first shard, a later shard, the manifest), plus one run against a real
full tmpfs where the machine allows user namespaces. The build must stop with one error naming
--out, remove what it wrote, and leave earlier builds byte-identical.

Damaged shards: bytes flipped in a member, or the shard cut inside a zstd member, after the
loader has opened and verified the shard (so only the zstd frame checksum can notice). Both
`data.on_corrupt` policies; the skip counts live in `state_dict()` and survive a resume.
Sweeps flip every bit of one zstd member and every byte of one tar header.
"""
from __future__ import annotations

import builtins
import errno
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import data_pipeline.manifest as manifest_module
import data_pipeline.shards as shards_module
from data_pipeline.build_dna import build_dna
from data_pipeline.config import DataConfig
from data_pipeline.demo import LAMBDA
from data_pipeline.errors import BuildWriteError, ManifestError, ShardCorruptError
from data_pipeline.formatters import IGNORE
from data_pipeline.loader import build_loader
from data_pipeline.manifest import read_manifest
from data_pipeline.shards import ShardReader
from launchers.main import main as bioxlstm

REPO = Path(__file__).resolve().parents[2]
SHARD_BYTES = 10240  # every shard of the small build below is one tar record (3 windows)
SMALL_BUILD = dict(window_len=2000, shard_mb=8000 / 2**20, val_fraction=0.1, progress=False)


# ------------------------------------------------------------------------------ disk full
class DiskFull:
    """`open` for the shard and manifest writers: `budget` bytes reach the disk, then every
    write fails with ENOSPC (the part that still fits is written first, as on a real disk)."""

    def __init__(self, budget: int):
        self.left = budget
        self.failures = 0

    def open(self, file, mode="r", *args, **kwargs):
        handle = builtins.open(file, mode, *args, **kwargs)
        return _FillingFile(handle, self) if any(flag in mode for flag in "wax+") else handle


class _FillingFile:
    def __init__(self, handle, disk: DiskFull):
        self._handle, self._disk = handle, disk

    def write(self, data):
        if len(data) <= self._disk.left:
            self._disk.left -= len(data)
            return self._handle.write(data)
        self._handle.write(data[:self._disk.left])
        self._disk.left = 0
        self._disk.failures += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self._handle.name))

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


def _fill_disk(monkeypatch, budget: int) -> DiskFull:
    disk = DiskFull(budget)
    monkeypatch.setattr(shards_module, "open", disk.open, raising=False)
    monkeypatch.setattr(manifest_module, "open", disk.open, raising=False)
    return disk


def _snapshot(root: Path) -> dict:
    """Every file and folder under root with its bytes: 'untouched' means equal snapshots."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def previous_build(tmp_path_factory):
    """A finished build next to which the failing builds write."""
    root = tmp_path_factory.mktemp("disk")
    build_dna([str(LAMBDA)], str(root / "previous"), **SMALL_BUILD)
    return root / "previous"


@pytest.mark.parametrize("where,budget", [
    ("first shard", 1000),
    ("fourth shard", 3 * SHARD_BYTES + 3000),
    ("manifest", 9 * SHARD_BYTES + 1000),  # all 9 shards fit, the 3 kB manifest does not
])
def test_disk_full_removes_the_new_build_and_keeps_the_previous_one(tmp_path, monkeypatch, previous_build,
                                                                    where, budget):
    before = _snapshot(previous_build)
    out = tmp_path / "runs" / "new"  # the build creates both folders
    disk = _fill_disk(monkeypatch, budget)
    with pytest.raises(BuildWriteError) as raised:
        build_dna([str(LAMBDA)], str(out), **SMALL_BUILD)
    message = str(raised.value)
    assert disk.failures >= 1 and message.startswith(f"{out}: cannot write the build (No space left on device")
    expected_file = {"first shard": "train-00000.tar", "fourth shard": "train-00003.tar",
                     "manifest": "manifest.json"}[where]
    assert f"writing {expected_file}" in message and "\n" not in message
    assert not (tmp_path / "runs").exists()  # nothing of the failed build, not even its folders
    assert _snapshot(previous_build) == before
    monkeypatch.undo()
    build_dna([str(LAMBDA)], str(out), **SMALL_BUILD)  # space freed: the same command now works
    assert read_manifest(out)["splits"] == read_manifest(previous_build)["splits"]


def test_disk_full_in_an_existing_folder_keeps_the_users_files(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _fill_disk(monkeypatch, 2 * SHARD_BYTES + 500)
    with pytest.raises(BuildWriteError, match="No space left on device"):
        build_dna([str(LAMBDA)], str(out), **SMALL_BUILD)
    assert _snapshot(out) == {"notes.txt": b"mine"}


def test_half_written_manifest_is_never_accepted(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    _fill_disk(monkeypatch, 9 * SHARD_BYTES + 1500)  # fails half-way through manifest.json
    with pytest.raises(BuildWriteError, match="writing manifest.json"):
        build_dna([str(LAMBDA)], str(out), **SMALL_BUILD)
    assert list(out.iterdir()) == []  # no manifest, no .manifest.json.partial, no shards
    with pytest.raises(ManifestError, match="not a finished build"):
        build_loader(DataConfig(modality="dna", shards=str(out)), "train", 64, 1)


def test_disk_full_through_the_cli_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    _fill_disk(monkeypatch, 5 * SHARD_BYTES)
    code = bioxlstm(["data", "build", "dna", str(LAMBDA), "--out", str(tmp_path / "o"), "--window-len", "2000",
                     "--shard-mb", str(8000 / 2**20), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {tmp_path / 'o'}: cannot write the build (No space left on device")
    assert not (tmp_path / "o").exists()


def _user_namespaces_work() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    return probe.returncode == 0


REAL_DISK_SCRIPT = """
set -e
mount -t tmpfs -o size=96k tmpfs "$MNT"
cp -r "$PREVIOUS" "$MNT/previous"
(cd "$MNT/previous" && sha256sum * > ../previous.sha256)
set +e
"$PYTHON" -m launchers.main data build dna "$LAMBDA" --out "$MNT/new" --window-len 2000 --shard-mb 0.0077 \
    --no-progress
echo "exit=$?"
ls -A "$MNT"
(cd "$MNT/previous" && sha256sum -c --quiet ../previous.sha256) && echo "previous intact"
"""


@pytest.mark.skipif(not _user_namespaces_work(), reason="needs unprivileged user+mount namespaces for a tmpfs")
def test_real_full_tmpfs(tmp_path):
    """The same guarantees against the kernel's ENOSPC: a 96 KiB tmpfs holding a previous
    build (3 shards, 80 KiB) has no room for a second one (7 shards, 130 KiB)."""
    small_previous = tmp_path / "previous"
    build_dna([str(LAMBDA)], str(small_previous), window_len=2000, shard_mb=30000 / 2**20, val_fraction=0.1,
              progress=False)
    (tmp_path / "mnt").mkdir()
    env = dict(os.environ, MNT=str(tmp_path / "mnt"), PREVIOUS=str(small_previous), PYTHON=sys.executable,
               LAMBDA=str(LAMBDA), PYTHONPATH=str(REPO))
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", REAL_DISK_SCRIPT],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    stderr = run.stderr.strip().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith(f"error: {tmp_path / 'mnt' / 'new'}: cannot write the build "
                                                     "(No space left on device"), run.stderr
    assert run.stdout.split() == ["exit=2", "previous", "previous.sha256", "previous", "intact"], run.stdout


# ------------------------------------------------------------------- damaged while reading
@pytest.fixture(scope="module")
def one_shard_build(tmp_path_factory):
    """All 23 train windows of lambda in one shard: the first batch opens and verifies it."""
    root = tmp_path_factory.mktemp("shards")
    build_dna([str(LAMBDA)], str(root / "clean"), window_len=2000, val_fraction=0.1, progress=False)
    return root / "clean"


def _copy(build: Path, tmp_path: Path) -> Path:
    target = tmp_path / "build"
    shutil.copytree(build, target)
    return target


def _loader(build: Path, on_corrupt: str):
    cfg = DataConfig(modality="dna", shards=str(build), num_workers=1, on_corrupt=on_corrupt, rc_augment=True)
    return build_loader(cfg, "train", 64, 2)


def _latest_first_use(loader) -> tuple[int, int]:
    """(sample, batch) for the sample whose first draw comes last in epoch 0."""
    first: dict[int, int] = {}
    for position, item in enumerate(loader.worker_items(0, 0)):
        first.setdefault(loader.items[item][1], position // loader.micro_batch_size)
    sample = max(first, key=first.get)
    return sample, first[sample]


def _draws(loader, sample: int, batches: range) -> int:
    """How often `sample` is drawn in the given batches of epoch 0."""
    items = loader.worker_items(0, 0)
    B = loader.micro_batch_size
    return sum(loader.items[items[p]][1] == sample for b in batches for p in range(b * B, (b + 1) * B))


def _take(loader, batches: int) -> list:
    return list(itertools.islice(iter(loader), batches))


def _same_batch(a, b) -> bool:
    return all(a[k].equal(b[k]) for k in a)


def _member(build: Path, sample: int):
    reader = ShardReader(build / "train-00000.tar")
    location = reader.locations[sample]
    reader.close()
    return location


def test_bytes_flipped_mid_epoch_stop_with_shard_and_member_or_are_skipped_and_counted(tmp_path, one_shard_build):
    reference = _loader(one_shard_build, "error")
    sample, first_batch = _latest_first_use(reference)
    assert first_batch >= 1  # the shard was opened (and its sha256 checked) before the damage
    clean = _take(reference, first_batch + 6)

    for policy in ("error", "skip"):
        build = _copy(one_shard_build, tmp_path / policy)
        loader = _loader(build, policy)
        stream = iter(loader)
        for index in range(first_batch):
            assert _same_batch(next(stream), clean[index])
        location = _member(build, sample)
        with open(build / "train-00000.tar", "r+b") as shard:  # damage the member in place
            shard.seek(location.offset + location.size // 2)
            byte = shard.read(1)
            shard.seek(-1, 1)
            shard.write(bytes([byte[0] ^ 0xFF]))
        if policy == "error":
            with pytest.raises(ShardCorruptError, match=f"train-00000.tar member {location.member}: cannot decode"):
                next(stream)
            continue
        damaged = next(stream)
        B = loader.micro_batch_size
        rows = [r for r in range(B) if loader.items[loader.worker_items(0, 0)[first_batch * B + r]][1] == sample]
        assert rows and [r for r, key in enumerate(loader.last_batch_keys) if key is None] == rows
        assert all((damaged["labels"][r] == IGNORE).all() for r in rows)
        kept = [r for r in range(B) if r not in rows]
        assert all(damaged["input_ids"][r].equal(clean[first_batch]["input_ids"][r]) for r in kept)
        for _ in range(5):
            next(stream)
        expected = _draws(loader, sample, range(first_batch + 6))
        assert loader.skipped_samples == expected and loader.state_dict()["skipped_samples"] == expected
        assert loader.checksum_mismatches == 0  # verified before the damage: only zstd noticed


def test_zstd_member_cut_mid_epoch(tmp_path, one_shard_build):
    """The shard is truncated inside a member: that sample and every later one are unreadable."""
    probe = _loader(one_shard_build, "error")
    sample, first_batch = _latest_first_use(probe)
    items = probe.worker_items(0, 0)
    B = probe.micro_batch_size

    def hits(batch):  # items of this batch whose sample lies at or after the cut
        return sum(probe.items[items[p]][1] >= sample for p in range(batch * B, (batch + 1) * B))

    for policy in ("error", "skip"):
        build = _copy(one_shard_build, tmp_path / policy)
        loader = _loader(build, policy)
        stream = iter(loader)
        for _ in range(first_batch):
            next(stream)
        consumed_before = loader.skipped_samples
        location = _member(build, sample)
        os.truncate(build / "train-00000.tar", location.offset + location.size // 2)
        if policy == "error":
            fails_at = next(b for b in range(first_batch, len(loader)) if hits(b))
            for _ in range(first_batch, fails_at):
                next(stream)
            with pytest.raises(ShardCorruptError, match=r"train-00000.tar member .*member is truncated"):
                next(stream)
            continue
        for _ in range(10):
            next(stream)
        assert consumed_before == 0
        assert loader.skipped_samples == sum(hits(b) for b in range(first_batch, first_batch + 10)) > 0


def test_skip_counts_survive_resume(tmp_path, one_shard_build):
    """Damaged before the run: an uninterrupted run and one stopped and resumed from its
    state_dict see the same batches and end with the same counts (a resumed loader verifies
    the shard again but does not count it twice)."""
    build = _copy(one_shard_build, tmp_path)
    location = _member(build, 3)
    with open(build / "train-00000.tar", "r+b") as shard:
        shard.seek(location.offset + 20)
        shard.write(b"\x00\x00")
    total, stop = 40, 17
    with pytest.warns(UserWarning, match="does not match"):
        uninterrupted = _loader(build, "skip")
        straight = _take(uninterrupted, total)
    first = _loader(build, "skip")
    with pytest.warns(UserWarning, match="does not match"):
        resumed_part = _take(first, stop)
    state = first.state_dict()
    assert state["skipped_samples"] == _draws(first, 3, range(stop)) > 0
    assert state["checksum_mismatch_shards"] == ["train-00000.tar"]
    second = _loader(build, "skip")
    second.load_state_dict(state)
    with pytest.warns(UserWarning, match="does not match"):
        resumed_part += _take(second, total - stop)
    assert all(_same_batch(a, b) for a, b in zip(straight, resumed_part))
    assert second.skipped_samples == uninterrupted.skipped_samples == _draws(first, 3, range(total))
    assert second.checksum_mismatches == uninterrupted.checksum_mismatches == 1


def test_every_bit_flip_in_a_zstd_member_is_detected_or_harmless(tmp_path, one_shard_build):
    """8 x (member size) damaged copies of one member: the frame checksum, content size or
    structure rejects each (a claimed size of terabytes included), except a few bits zstd
    does not use for this frame (the header's unused bit, spare Huffman/FSE table states),
    which decode to the same sequences; none decodes to different ones."""
    build = _copy(one_shard_build, tmp_path)
    path = build / "train-00000.tar"
    location = _member(build, 0)
    reader = ShardReader(path, on_corrupt="skip")
    original = reader.read_sequences(0)
    detected = undetected = 0
    with open(path, "r+b") as shard:
        for offset in range(location.offset, location.offset + location.size):
            shard.seek(offset)
            byte = shard.read(1)[0]
            for bit in range(8):
                shard.seek(offset)
                shard.write(bytes([byte ^ (1 << bit)]))
                shard.flush()
                reader.close()  # drop the read buffer: read the damaged bytes from the file
                sequences = reader.read_sequences(0)
                if sequences is None:
                    detected += 1
                else:
                    undetected += 1
                    assert sequences == original
            shard.seek(offset)
            shard.write(bytes([byte]))
    reader.close()
    assert detected + undetected == 8 * location.size and undetected < 0.01 * detected


def test_tar_header_damage_is_refused_or_harmless(tmp_path, one_shard_build):
    """Without sha256 verification (very large builds), each byte of the first member's tar
    header flipped in turn: the reader refuses the shard, or fails the sample, or reads every
    sample exactly as before; it never returns different data."""
    build = _copy(one_shard_build, tmp_path)
    path = build / "train-00000.tar"
    clean_reader = ShardReader(path)
    samples = len(clean_reader)
    original = [clean_reader.read_sequences(i) for i in range(samples)]
    clean_reader.close()
    data = bytearray(path.read_bytes())
    outcomes = {"refused": 0, "harmless": 0}
    for offset in range(512):
        data[offset] ^= 0xFF
        path.write_bytes(bytes(data))
        data[offset] ^= 0xFF
        try:
            reader = ShardReader(path, expected_samples=samples)
            read_back = [reader.read_sequences(i) for i in range(samples)]
            reader.close()
        except ShardCorruptError:
            outcomes["refused"] += 1
            continue
        assert read_back == original, f"header byte {offset}"
        outcomes["harmless"] += 1
    assert outcomes["refused"] > 0 and sum(outcomes.values()) == 512


# ------------------------------------------------------------------------ the CLI, bad input
BAD_INPUTS = {
    "dna": ("genome.fa", b">r1\nACGT\x05ACGT\n"),
    "protein": ("seqs.fa", b">P1\nMKT!L\n"),
    "molecules": ("mols.csv", b"smiles,domain\nCCO,a\n\xff\xfeCC,b\n"),
}


@pytest.mark.parametrize("modality", sorted(BAD_INPUTS))
def test_cli_bad_input_leaves_no_output_dir(tmp_path, capsys, modality):
    name, content = BAD_INPUTS[modality]
    (tmp_path / name).write_bytes(content)
    out = tmp_path / "nested" / "out"
    code = bioxlstm(["data", "build", modality, str(tmp_path / name), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and name in err[0]
    assert not (tmp_path / "nested").exists()


@pytest.mark.parametrize("existing", ["finished build", "folder with user files"])
def test_cli_bad_input_leaves_an_existing_output_dir_untouched(tmp_path, capsys, previous_build, existing):
    if existing == "finished build":
        out = _copy(previous_build, tmp_path)
    else:
        out = tmp_path / "out"
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        (out / "train-00000.tar").write_bytes(b"left by an interrupted build")
    before = _snapshot(out)
    (tmp_path / "genome.fa").write_bytes(BAD_INPUTS["dna"][1])
    code = bioxlstm(["data", "build", "dna", str(tmp_path / "genome.fa"), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert ("holds a finished build" in err[0]) == (existing == "finished build")
    assert _snapshot(out) == before
