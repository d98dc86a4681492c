"""Shard builders on real demo data: determinism, group-level split, atomicity, WebDataset format."""
import gzip
import io
import json
import tarfile

import pytest
import webdataset as wds
import zstandard

from data_pipeline import shards as shards_module
from data_pipeline.build_dna import build_dna
from data_pipeline.build_molecules import build_molecules
from data_pipeline.build_protein import build_protein
from data_pipeline.demo import CLUSTERS, LAMBDA, PROTEINS, build_demo_shards
from data_pipeline.errors import OutputExistsError
from data_pipeline.manifest import read_manifest
from launchers.main import main as bioxlstm


def _samples_meta(build_dir, split):
    """All sample metadata of a split, read straight from the tar members."""
    metas = []
    for shard in read_manifest(build_dir)["splits"][split]["shards"]:
        with tarfile.open(build_dir / shard["name"]) as archive:
            for member in archive:
                if member.name.endswith(".json.zst"):
                    payload = archive.extractfile(member).read()
                    metas.append(json.loads(zstandard.ZstdDecompressor().decompress(payload)))
    return metas


@pytest.mark.parametrize("modality", ["dna", "protein", "molecules"])
def test_build_is_byte_identical_twice(modality, demo_builds, tmp_path):
    again = build_demo_shards(tmp_path / modality, modality)
    first = demo_builds[modality]
    manifest = read_manifest(first)
    second = read_manifest(again)
    # Input paths differ (the DNA demo stages its genome slice inside the build dir); all else is equal.
    assert manifest["build_args"].pop("inputs") != [] and second["build_args"].pop("inputs") != []
    assert second == manifest
    names = [s["name"] for split in manifest["splits"].values() for s in split["shards"]]
    assert names
    for name in names:
        assert (again / name).read_bytes() == (first / name).read_bytes()


@pytest.mark.parametrize("modality", ["dna", "protein", "molecules"])
def test_group_split_has_no_leakage(modality, demo_builds):
    train = _samples_meta(demo_builds[modality], "train")
    val = _samples_meta(demo_builds[modality], "validation")
    assert train and val
    assert not {m["group"] for m in train} & {m["group"] for m in val}
    manifest = read_manifest(demo_builds[modality])
    assert manifest["splits"]["validation"]["samples"] == len(val)
    assert manifest["splits"]["train"]["tokens"] == sum(m["tokens"] for m in train)


def test_protein_sample_is_whole_cluster(demo_builds):
    clusters = {}
    with gzip.open(CLUSTERS, "rt") as handle:
        for line in handle:
            rep, member = line.split()
            clusters.setdefault(rep, []).append(member)
    for meta in _samples_meta(demo_builds["protein"], "train")[:50]:
        assert meta["sequences"] == len(clusters[meta["group"]]) >= 2


def test_manifest_records_checksums_tokenizer_and_args(demo_builds):
    import hashlib

    build = demo_builds["protein"]
    manifest = read_manifest(build)
    assert manifest["tokenizer"]["type"] == "protein" and len(manifest["tokenizer"]["vocab"]) == 38
    assert manifest["build_args"]["max_clusters"] == 2000
    for shard in manifest["splits"]["train"]["shards"]:
        assert hashlib.sha256((build / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]


def test_shards_are_webdataset_with_zstd_members(demo_builds):
    build = demo_builds["dna"]
    shard = read_manifest(build)["splits"]["train"]["shards"][0]
    dataset = wds.WebDataset(str(build / shard["name"]), shardshuffle=False,
                             nodesplitter=wds.shardlists.single_node_only)
    samples = list(dataset)
    assert len(samples) == shard["samples"]
    text = zstandard.ZstdDecompressor().decompress(samples[0]["txt.zst"]).decode()
    assert set(text) <= set("ACGTN") and len(text) == json.loads(
        zstandard.ZstdDecompressor().decompress(samples[0]["json.zst"]))["tokens"]
    with tarfile.open(build / shard["name"]) as archive:
        assert {(m.mtime, m.uid, m.gid, m.mode) for m in archive} == {(0, 0, 0, 0o644)}


def test_dna_n_runs_split_records_and_records_stay_in_one_shard(tmp_path):
    fasta = tmp_path / "two.fa"
    fasta.write_text(">r1\n" + "ACGT" * 300 + "N" * 150 + "acgt" * 200 + "NNNN" + "GGCC" * 100 + "\n"
                     ">r2\n" + "TTGCA" * 400 + "\n")
    manifest = build_dna([str(fasta)], str(tmp_path / "out"), window_len=1000, min_window_len=100,
                         val_fraction=0, shard_mb=3000 / 2**20, progress=False)
    metas = _samples_meta(tmp_path / "out", "train")
    assert [m["name"].split(":", 1)[1] for m in metas] == [
        "r1:0-1000", "r1:1000-1200", "r1:1350-2350", "r1:2350-2554", "r2:0-1000", "r2:1000-2000"]
    assert manifest["stats"]["n_run_bases"] == 150
    # r1 (2,054 bases) fits one 3,000-byte shard, so r2 starts a new shard instead of splitting r1
    assert [s["samples"] for s in manifest["splits"]["train"]["shards"]] == [4, 2]


def test_interrupted_build_leaves_no_complete_looking_shard(tmp_path, monkeypatch):
    original = shards_module.ShardWriter.write
    calls = {"n": 0}

    def failing_write(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 30:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(shards_module.ShardWriter, "write", failing_write)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        build_dna([str(LAMBDA)], str(out), window_len=1000, shard_mb=20000 / 2**20, progress=False)
    assert not (out / "manifest.json").exists()
    assert not list(out.glob(".*.partial"))
    finished = sorted(out.glob("*.tar"))
    assert finished  # the first shard(s) completed before the interruption ...
    monkeypatch.setattr(shards_module.ShardWriter, "write", original)
    build_dna([str(LAMBDA)], str(tmp_path / "full"), window_len=1000, shard_mb=20000 / 2**20,
              progress=False)
    for tar in finished:  # ... and are exactly the shards of an uninterrupted build
        assert tar.read_bytes() == (tmp_path / "full" / tar.name).read_bytes()
    # rerunning into the interrupted directory completes the build
    build_dna([str(LAMBDA)], str(out), window_len=1000, shard_mb=20000 / 2**20, progress=False)
    assert read_manifest(out)["splits"] == read_manifest(tmp_path / "full")["splits"]


def test_existing_build_is_never_overwritten(demo_builds):
    before = (demo_builds["dna"] / "manifest.json").read_bytes()
    with pytest.raises(OutputExistsError, match="choose another --out"):
        build_dna([str(LAMBDA)], str(demo_builds["dna"]), progress=False)
    assert (demo_builds["dna"] / "manifest.json").read_bytes() == before


def test_protein_family_files_a3m_and_stockholm(tmp_path):
    families = tmp_path / "families"
    families.mkdir()
    (families / "famA.a3m").write_text("#comment\n>q\nMKT-LV\n>h1\nMKtaLV-\n")
    (families / "famB.sto").write_text("# STOCKHOLM 1.0\ns1 MK..LV\ns2 MR--LI\n\ns1 WW\ns2 WY\n//\n")
    build_protein([str(families)], str(tmp_path / "out"), val_fraction=0, progress=False)
    metas = _samples_meta(tmp_path / "out", "train")
    assert sorted((m["group"], m["sequences"], m["tokens"]) for m in metas) == [
        ("famA", 2, 5 + 6), ("famB", 2, 6 + 6)]


def test_molecule_domains_from_csv_count_invalid_smiles(tmp_path):
    csv_path = tmp_path / "mols.csv"
    csv_path.write_text("smiles,domain\nCCO,a\nOCC,a\nc1ccccc1O,b\nC1CC,b\nc1ccccc1N,b\nnot_a_smiles,a\n")
    manifest = build_molecules([str(csv_path)], str(tmp_path / "out"), min_domain_size=1,
                               val_fraction=0, progress=False)
    assert manifest["stats"]["invalid_smiles"] == 2
    assert any("C1CC" in e for e in manifest["stats"]["invalid_examples"])
    metas = _samples_meta(tmp_path / "out", "train")
    assert sorted((m["group"], m["sequences"]) for m in metas) == [("a", 2), ("b", 2)]


def test_cli_builds_protein_shards(tmp_path, capsys):
    out = tmp_path / "cli"
    code = bioxlstm(["data", "build", "protein", str(PROTEINS), "--clusters", str(CLUSTERS),
                     "--min-members", "5", "--max-clusters", "40", "--out", str(out), "--no-progress"])
    assert code == 0
    assert "train:" in capsys.readouterr().out
    assert read_manifest(out)["splits"]["train"]["groups"] + read_manifest(out)["splits"]["validation"]["groups"] == 40


def test_dna_split_by_record_keeps_each_record_on_one_side(tmp_path):
    rng = __import__("random").Random(9)
    fasta = tmp_path / "records.fa"
    fasta.write_text("".join(f">rec{i}\n" + "".join(rng.choice("ACGT") for _ in range(900)) + "\n"
                             for i in range(12)))
    build_dna([str(fasta)], str(tmp_path / "out"), window_len=200, split_by="record",
              val_fraction=0.25, progress=False)
    sides = {}
    for split in ("train", "validation"):
        for meta in _samples_meta(tmp_path / "out", split):
            sides.setdefault(meta["group"], set()).add(split)
    assert len(sides) == 12 and all(len(s) == 1 for s in sides.values())
    assert sum(s == {"validation"} for s in sides.values()) == 3
