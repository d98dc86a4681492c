"""Each kind of bad input gets one clear, user-facing error naming the file/member and the fix."""
import gzip
import json
import shutil

import pytest

from data_pipeline.build_dna import build_dna
from data_pipeline.build_protein import build_protein
from data_pipeline.config import DataConfig
from data_pipeline.demo import LAMBDA
from data_pipeline.errors import (DataPipelineError, InputFormatError, ManifestError,
                                  ShardCorruptError, UnknownSymbolError)
from data_pipeline.loader import build_loader
from data_pipeline.manifest import read_manifest
from launchers.main import main as bioxlstm


def _build(tmp_path, text, name="in.fa", **kwargs):
    path = tmp_path / name
    path.write_text(text)
    return build_dna([str(path)], str(tmp_path / "out"), window_len=200, min_window_len=10,
                     val_fraction=0, progress=False, **kwargs)


@pytest.mark.parametrize("text,match", [
    ("ACGT\n>r1\nACGT\n", "line 1: sequence before the first '>'"),
    (">r1\n>r2\nACGT\n", "line 1: record 'r1' has no sequence"),
    (">r1\nACGT\n>r2\n", "line 3: record 'r2' has no sequence"),
    ("", "no FASTA records"),
    (">\nACGT\n", "header without a name"),
])
def test_malformed_fasta(tmp_path, text, match):
    with pytest.raises(InputFormatError, match=match):
        _build(tmp_path, text)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_truncated_gzip_fasta(tmp_path):
    data = LAMBDA.read_bytes()
    (tmp_path / "cut.fa.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFormatError, match="cut.fa.gz: truncated or corrupt gzip"):
        build_dna([str(tmp_path / "cut.fa.gz")], str(tmp_path / "out"), progress=False)


def test_unknown_characters_error_by_default_replace_on_request(tmp_path):
    with pytest.raises(UnknownSymbolError, match=r"'J' at position 3 in .*in.fa record 'r1'.*--unknown=replace"):
        _build(tmp_path, ">r1 some description\nACGJACGTACGTACGTACGT\n")
    manifest = _build(tmp_path, ">r1\nACGJACGTACGTACGTACGT\n", unknown="replace")
    assert manifest["splits"]["train"]["tokens"] == 20


def test_protein_unknown_residue_and_missing_member(tmp_path):
    fasta = tmp_path / "p.fa"
    fasta.write_text(">sp|P1|A\nMKT*\n")
    with pytest.raises(UnknownSymbolError, match=r"'\*' at position 3"):
        build_protein([str(fasta)], str(tmp_path / "o1"), progress=False)
    fasta.write_text(">sp|P1|A\nMKTL\n")
    table = tmp_path / "c.tsv"
    table.write_text("P1\tP1\nP1\tP2\n")
    with pytest.raises(InputFormatError, match="c.tsv line 2: member 'P2' is not in the FASTA"):
        build_protein([str(fasta)], str(tmp_path / "o2"), clusters=str(table), progress=False)


@pytest.fixture
def small_build(tmp_path):
    build_dna([str(LAMBDA)], str(tmp_path / "build"), window_len=2000, val_fraction=0.1,
              progress=False)
    return tmp_path / "build"


def _first_train_shard(build):
    shard = read_manifest(build)["splits"]["train"]["shards"][0]
    return build / shard["name"], shard


def _drain(build, **overrides):
    cfg = DataConfig(modality="dna", shards=str(build), num_workers=1, **overrides)
    loader = build_loader(cfg, "train", 64, 1)
    stream = iter(loader)
    for _ in range(len(loader)):
        next(stream)
    return loader


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="manifest.json not found.*bioxlstm data build"):
        build_loader(DataConfig(modality="dna", shards=str(tmp_path)), "train", 64, 1)


def test_checksum_mismatch(small_build):
    path, _ = _first_train_shard(small_build)
    data = bytearray(path.read_bytes())
    data[700] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=f"{path.name}: sha256 .* does not match"):
        _drain(small_build)


def test_corrupt_zstd_member_names_shard_and_member_or_is_skipped_and_counted(small_build):
    path, shard = _first_train_shard(small_build)
    data = bytearray(path.read_bytes())
    data[512 + 100] ^= 0xFF  # inside the payload of the first member
    path.write_bytes(bytes(data))
    with pytest.raises(ShardCorruptError, match=f"{path.name} member train-00000-000000.txt.zst"):
        _drain(small_build, verify_checksums=False)
    with pytest.warns(UserWarning, match="does not match"):
        loader = _drain(small_build, on_corrupt="skip")
    bad_items = [i for i in loader.worker_items(0, 0) if i is not None and loader.items[i][:2] == (0, 0)]
    assert loader.skipped_samples == len(bad_items) > 0  # only the damaged sample, each time it is drawn
    assert loader.checksum_mismatches == 1
    assert loader.state_dict()["skipped_samples"] == loader.skipped_samples


def test_truncated_shard_error_or_skip(small_build):
    path, shard = _first_train_shard(small_build)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ShardCorruptError, match=f"{path.name}.*truncated"):
        _drain(small_build, verify_checksums=False)
    with pytest.warns(UserWarning, match="does not match"):
        loader = _drain(small_build, on_corrupt="skip")
    readable = len(loader._readers[0])
    lost = [i for i in loader.worker_items(0, 0) if i is not None and loader.items[i][0] == 0
            and loader.items[i][1] >= readable]
    assert 0 < readable < shard["samples"] and loader.skipped_samples == len(lost) > 0


def test_cli_prints_one_line_error(tmp_path, capsys):
    (tmp_path / "bad.fa").write_text("ACGT\n")
    code = bioxlstm(["data", "build", "dna", str(tmp_path / "bad.fa"), "--out", str(tmp_path / "o"),
                     "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "bad.fa line 1" in err[0]


def test_every_error_is_user_facing():
    assert all(cls.user_facing for cls in DataPipelineError.__subclasses__())
