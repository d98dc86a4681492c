"""Fuzzing every parser a user feeds: FASTA (DNA, protein), cluster tables, Stockholm/A3M,
SMILES CSV, a build's manifest.json, run-config YAML and command-line overrides.

Property, for every drawn input: the parser accepts it and what it stores is clean (only
vocabulary characters, canonical SMILES, a config that saves and loads back unchanged), or
it raises the project's own user-facing error, on one line, naming the input file, and
leaves no output directory behind. Any other exception fails the test with hypothesis'
minimal example. Structured strategies (valid files, then damaged) reach the deep code;
raw text/bytes catch what the structure never produces. Bounded: derandomized, a fixed
number of examples per fuzzer (BIOXLSTM_FUZZ_SCALE multiplies it).
"""
from __future__ import annotations

import copy
import dataclasses
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from data_pipeline.build_dna import build_dna
from data_pipeline.build_molecules import build_molecules
from data_pipeline.build_protein import build_protein
from data_pipeline.config import DataConfig
from data_pipeline.demo import LAMBDA
from data_pipeline.errors import DataPipelineError
from data_pipeline.loader import build_loader
from data_pipeline.manifest import read_manifest
from data_pipeline.readers import read_family_file, read_fasta
from data_pipeline.tokenizers import load_tokenizer
from launchers.main import main as bioxlstm
from pretrain.config import load_run_config
from pretrain.errors import ConfigError
from tests.reliability.data_fuzz_inputs import (DNA_ALPHABET, STORED_DNA, STORED_PROTEIN,
                                                VALID_SMILES, alignment, check_user_error, cluster_input, fasta_text,
                                                file_bytes, fuzz_settings, mutated, smiles_csv,
                                                stored_sequences)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DNA_BUILD = dict(window_len=64, min_window_len=4, min_n_run=10, val_fraction=0.2,
                 shard_mb=300 / 2**20, progress=False)


def _workdir():
    return tempfile.TemporaryDirectory(prefix="fuzz-")


# --------------------------------------------------------------------------------- FASTA
@fuzz_settings(150)
@given(fasta_text(DNA_ALPHABET), st.booleans(), st.booleans())
def test_valid_fasta_reads_back_exactly(drawn, gzipped, bom):
    records, text = drawn
    data = (("\ufeff" if bom else "") + text).encode()
    with _workdir() as work:
        path = Path(work) / "in.fa"
        path.write_bytes(gzip.compress(data) if gzipped else data)
        assert [(r.name, r.sequence) for r in read_fasta(path)] == records


def _check_dna_build(out: Path) -> None:
    stats = read_manifest(out)["stats"]
    stored = list(stored_sequences(out))
    assert all(STORED_DNA.fullmatch(s) for s in stored), stored
    assert sum(map(len, stored)) == stats["bases"] - stats["n_run_bases"] - stats["dropped_short_bases"]


def _dna_build_or_error(data: bytes, unknown: str = "error") -> None:
    with _workdir() as work:
        path, out = Path(work) / "genome.fa", Path(work) / "out"
        path.write_bytes(data)
        try:
            build_dna([str(path)], str(out), unknown=unknown, **DNA_BUILD)
        except DataPipelineError as err:
            check_user_error(err, [path], out)
        else:
            _check_dna_build(out)


@fuzz_settings(400)
@given(st.data(), fasta_text(DNA_ALPHABET), st.sampled_from(["error", "replace"]))
def test_damaged_dna_fasta_builds_clean_or_fails_with_one_error(data, drawn, unknown):
    _, text = drawn
    _dna_build_or_error(data.draw(file_bytes(data.draw(mutated(text)))), unknown)


@fuzz_settings(250)
@given(st.sampled_from([b"", b">r\n", b">r\nACGT", b"\x1f\x8b"]), st.binary(max_size=300))
def test_raw_bytes_as_dna_fasta(prefix, raw):
    _dna_build_or_error(prefix + raw)


# ------------------------------------------------------------------- protein cluster tables
def _protein_build_or_error(files: dict[str, bytes], clusters: bool) -> None:
    with _workdir() as work:
        paths = {name: Path(work) / name for name in files}
        for name, content in files.items():
            paths[name].write_bytes(content)
        out = Path(work) / "out"
        try:
            if clusters:
                build_protein([str(paths["seqs.fa"])], str(out), clusters=str(paths["clusters.tsv"]),
                              val_fraction=0.3, progress=False)
            else:
                build_protein([str(p) for p in paths.values()], str(out), val_fraction=0.3, progress=False)
        except DataPipelineError as err:
            check_user_error(err, list(paths.values()), out)
        else:
            manifest = read_manifest(out)
            stored = list(stored_sequences(out))
            assert all(STORED_PROTEIN.fullmatch(s) for s in stored), stored
            assert sum(s["samples"] for s in manifest["splits"].values()) == manifest["stats"]["clusters"]


@fuzz_settings(400)
@given(st.data(), cluster_input(), st.sampled_from(["fasta", "table", "both"]))
def test_damaged_fasta_or_cluster_table_builds_clean_or_fails_with_one_error(data, drawn, damage):
    fasta, table = drawn
    if damage in ("fasta", "both"):
        fasta = data.draw(mutated(fasta))
    if damage in ("table", "both"):
        table = data.draw(mutated(table))
    _protein_build_or_error({"seqs.fa": data.draw(file_bytes(fasta)),
                             "clusters.tsv": data.draw(file_bytes(table))}, clusters=True)


@fuzz_settings(150)
@given(cluster_input(), st.text(max_size=200))
def test_raw_text_as_cluster_table(drawn, table):
    fasta, _ = drawn
    _protein_build_or_error({"seqs.fa": fasta.encode(), "clusters.tsv": table.encode("utf-8", "surrogatepass")},
                            clusters=True)


# ------------------------------------------------------------------------ Stockholm / A3M
@fuzz_settings(150)
@given(alignment())
def test_valid_alignment_reads_back_ungapped(drawn):
    kind, expected, text = drawn
    with _workdir() as work:
        path = Path(work) / f"family.{kind}"
        path.write_text(text)
        assert [(r.name, r.sequence) for r in read_family_file(path)] == expected


@fuzz_settings(400)
@given(st.data(), alignment())
def test_damaged_alignment_builds_clean_or_fails_with_one_error(data, drawn):
    kind, _, text = drawn
    extra = ["#=GS x DE d\n", "#=GC SS_cons ...\n", "x ACGT\n", "a b c\n", ">\n", "#A3M\n"]
    damaged = data.draw(mutated(text, extra))
    _protein_build_or_error({f"family.{kind}": data.draw(file_bytes(damaged))}, clusters=False)


@fuzz_settings(150)
@given(st.sampled_from(["sto", "a3m"]), st.text(max_size=200))
def test_raw_text_as_alignment(kind, text):
    prefix = "# STOCKHOLM 1.0\n" if kind == "sto" else ""
    _protein_build_or_error({f"family.{kind}": (prefix + text).encode("utf-8", "surrogatepass")},
                            clusters=False)


# ---------------------------------------------------------------------------- SMILES CSV
def _molecule_build_or_error(data: bytes, suffix: str) -> None:
    from rdkit import Chem

    with _workdir() as work:
        path, out = Path(work) / f"molecules.{suffix}", Path(work) / "out"
        path.write_bytes(data)
        try:
            build_molecules([str(path)], str(out), min_domain_size=1, val_fraction=0.3, progress=False)
        except DataPipelineError as err:
            check_user_error(err, [path], out)
        else:
            manifest = read_manifest(out)
            tokenizer = load_tokenizer(manifest["tokenizer"])
            stored = list(stored_sequences(out))
            for smiles in stored:
                assert Chem.MolToSmiles(Chem.MolFromSmiles(smiles)) == smiles  # canonical, valid
                tokenizer.encode(smiles)  # every stored token is in the build's vocabulary
            stats = manifest["stats"]
            assert len(stored) == stats["molecules_read"] - stats["invalid_smiles"]


@fuzz_settings(300)
@given(st.data(), smiles_csv(), st.booleans())
def test_damaged_smiles_csv_builds_clean_or_fails_with_one_error(data, text, damage):
    if damage:
        text = data.draw(mutated(text))
    _molecule_build_or_error(data.draw(file_bytes(text)), "csv")


@fuzz_settings(150)
@given(st.sampled_from(["", "smiles,domain\n", "smiles\n"]), st.text(max_size=200))
def test_raw_text_as_smiles_file(header, text):
    _molecule_build_or_error((header + text).encode("utf-8", "surrogatepass"), "smi")


# --------------------------------------------------------------------------- build manifest
@pytest.fixture(scope="module")
def small_builds(tmp_path_factory):
    """A 9-shard DNA build and a molecule build whose manifests the fuzzer damages."""
    root = tmp_path_factory.mktemp("manifests")
    build_dna([str(LAMBDA)], str(root / "dna"), window_len=2000, shard_mb=8000 / 2**20, val_fraction=0.1,
              progress=False)
    (root / "mols.csv").write_text("smiles,domain\n" + "".join(f"{s},d{i % 4}\n" for i, s in enumerate(VALID_SMILES)))
    build_molecules([str(root / "mols.csv")], str(root / "molecules"), min_domain_size=1, val_fraction=0.3,
                    progress=False)
    return root


def _json_paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _json_paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value[:3]):
            yield from _json_paths(item, prefix + (index,))


JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                        st.text(max_size=6), st.sampled_from(["../escape.tar", "", ".hidden", "train-00001.tar",
                                                              "dna", "protein", "molecules", "clm"]),
                        st.lists(st.integers(-1, 3000), max_size=4), st.just({}), st.just([]))


@fuzz_settings(250)
@given(st.data(), st.sampled_from(["dna", "molecules"]), st.booleans())
def test_damaged_manifest_loads_or_fails_with_one_error(small_builds, data, modality, verify):
    source = small_builds / modality
    manifest = json.loads((source / "manifest.json").read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(list(_json_paths(manifest))[1:]))
        node = manifest
        for part in path[:-1]:
            node = node[part]
        if isinstance(node, dict) and data.draw(st.booleans()) and data.draw(st.booleans()):
            del node[path[-1]]
        else:
            node[path[-1]] = data.draw(JSON_VALUES)
    text = json.dumps(manifest)
    if data.draw(st.integers(0, 4)) == 0:
        text = data.draw(mutated(text, ['"', "{", "}", "[", "]", ",", ":", "null", "-1"]))
    with _workdir() as work:
        build = Path(work)
        for shard in source.glob("*.tar"):
            os.symlink(shard, build / shard.name)
        (build / "manifest.json").write_bytes(data.draw(file_bytes(text)))
        cfg = DataConfig(modality=modality, shards=str(build), num_workers=1, verify_checksums=verify)
        try:
            for split in ("train", "validation"):
                loader = build_loader(cfg, split, 32, 1)
                for _, batch in zip(range(3), loader):
                    assert batch["input_ids"].shape == (1, 32)
            event("loaded")
        except DataPipelineError as err:
            event(f"refused: {type(err).__name__}")
            message = str(err)
            assert err.user_facing and "\n" not in message, message


# ----------------------------------------------------------------------- run config YAML
def _schema_paths() -> list[str]:
    """Every dotted key a run config may hold, plus the keys of the shipped demo config."""
    from data_pipeline.config import DataConfig
    from modeling import ModelConfig
    from pretrain.config import ParallelConfig, StageConfig, TrainConfig

    paths = [f"{section}.{f.name}" for section, cls in (("model", ModelConfig), ("data", DataConfig),
                                                         ("train", TrainConfig), ("parallel", ParallelConfig))
             for f in dataclasses.fields(cls)]
    paths += [f"curriculum.stages.{i}.{f.name}" for i in (0, 1) for f in dataclasses.fields(StageConfig)]
    return paths + ["model.base", "curriculum.stages", "curriculum", "train", "data", "model", "extra"]


SCHEMA_PATHS = _schema_paths()
YAML_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=8),
    st.lists(st.integers(-2, 8) | st.floats(-1, 2), max_size=3),
    st.dictionaries(st.sampled_from(["a", "context_len", "tokens"]), st.integers(-1, 4096), max_size=2),
    st.sampled_from([0, 1, -1, 2, 3, 1e-9, 3e-4, 0.5, 1.0, 7.9e9, "1e9", "3e-4", "yes", "dna", "protein",
                     "molecules", "mlm", "skip", "wsd", "bf16", "", "models/dna_tiny.yaml", "../x.yaml"]))
SCALAR_TEXT = st.sampled_from(["3e-4", "1e9", "2001-02-30", "2001-02-03", ".nan", "-.inf", "~", "null", "[1, 2]",
                               "[0.9,0.95]", "{a: 1}", "[", "'", "yes", "0x1F", "1_000", "&a [*a]", "!!binary x",
                               "!!python/object:os.system", "mlm", "models/protein_tiny.yaml", "a" * 300])


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
    """A copy of configs/ (run configs find their model base relative to themselves)."""
    target = tmp_path_factory.mktemp("configs") / "configs"
    shutil.copytree(CONFIGS, target)
    return target


def _set(raw: dict, dotted: str, value) -> None:
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            return
    if isinstance(node, dict):
        node[parts[-1]] = value
    elif isinstance(node, list) and parts[-1].isdigit() and int(parts[-1]) < len(node):
        node[int(parts[-1])] = value


def _load_or_error(path: Path, overrides=()) -> None:
    """load_run_config accepts (and the resolved config saves and loads back unchanged) or
    raises one single-line ConfigError naming the config file."""
    try:
        cfg = load_run_config(path, list(overrides))
    except ConfigError as err:
        event("refused: ConfigError")
        message = str(err)
        assert err.user_facing and "\n" not in message, message
        assert str(path) in message, message
        return
    event("loaded")
    with _workdir() as work:
        saved = cfg.save(work)
        assert load_run_config(saved).to_dict() == cfg.to_dict()


@fuzz_settings(300)
@given(st.data(), st.sampled_from(["demo_dna.yaml", "demo_protein.yaml", "demo_molecules.yaml"]))
def test_run_config_field_mutations_load_or_fail_with_one_error(config_dir, data, name):
    raw = yaml.safe_load((config_dir / name).read_text())
    mutated_raw = copy.deepcopy(raw)
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(SCHEMA_PATHS))
        _set(mutated_raw, key, data.draw(YAML_VALUES))
    path = config_dir / f"fuzz_{name}"
    path.write_text(yaml.safe_dump(mutated_raw))
    _load_or_error(path)


YAML_TRICKY = [": ", "- ", "{", "}", "[", "]", "&a ", "*a", "<<: *a\n", "!!python/object:os.system ", "2001-02-30",
               ".nan", "~", "\t", "'", '"', "? ", "%YAML 1.1\n", "---\n", "\x00", "\ufeff", "1e999"]


@fuzz_settings(300)
@given(st.data(), st.sampled_from(["run", "base"]))
def test_run_config_text_mutations_load_or_fail_with_one_error(config_dir, data, which):
    run_text = (config_dir / "demo_dna.yaml").read_text()
    base_text = (config_dir / "models" / "dna_tiny.yaml").read_text()
    with _workdir() as work:
        (Path(work) / "models").mkdir()
        run, base = Path(work) / "run.yaml", Path(work) / "models" / "dna_tiny.yaml"
        if which == "run":
            run_text = data.draw(mutated(run_text, YAML_TRICKY))
        else:
            base_text = data.draw(mutated(base_text, YAML_TRICKY))
        run.write_bytes(data.draw(file_bytes(run_text)) if which == "run" else run_text.encode())
        base.write_bytes(data.draw(file_bytes(base_text)) if which == "base" else base_text.encode())
        try:
            load_run_config(run)
            event("loaded")
        except ConfigError as err:
            event("refused: ConfigError")
            message = str(err)
            assert err.user_facing and "\n" not in message, message
            assert str(run) in message or str(base) in message, message


GOOD_OVERRIDES = st.sampled_from([
    "train.lr=3e-4", "train.seed=7", "train.betas=[0.9,0.99]", "train.zero_stage=2", "train.max_steps=null",
    "data.num_workers=3", "data.on_corrupt=skip", "data.fim=false", "curriculum.stages.0.tokens=1e6",
    "model.base=models/protein_tiny.yaml", "train.schedule=wsd", "parallel.context_parallel_size=1"])
OVERRIDE = st.one_of(
    GOOD_OVERRIDES, GOOD_OVERRIDES,
    st.builds(lambda key, value: f"{key}={value}", st.sampled_from(SCHEMA_PATHS), SCALAR_TEXT | st.text(max_size=10)),
    st.builds(lambda key, value: f"{key}={value}", st.sampled_from(SCHEMA_PATHS).flatmap(mutated), SCALAR_TEXT),
    st.text(max_size=30))


@fuzz_settings(400)
@given(st.lists(OVERRIDE, min_size=1, max_size=3))
def test_cli_overrides_apply_or_fail_with_one_error(config_dir, overrides):
    _load_or_error(config_dir / "demo_protein.yaml", overrides)


# ------------------------------------------------------------------ through the console script
@pytest.mark.parametrize("override", ["train.seed=2001-02-30", "curriculum.stages.\u00b2.tokens=5",
                                      "train.lr=.nan", "data.fim_mean_spans=.inf", "model.base=" + "a" * 5000])
def test_bad_override_through_bioxlstm_train_is_one_line_exit_2(config_dir, capsys, override):
    code = bioxlstm(["train", "--config", str(config_dir / "demo_protein.yaml"), override])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "demo_protein.yaml" in err[0]
