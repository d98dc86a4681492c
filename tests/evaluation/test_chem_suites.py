"""chem-unconditional and chem-domains on a tiny real model: every figure equals a recomputation
from the same samples (drawn again with the same seeds) with RDKit and fcd_torch directly, and
bad inputs give the promised one-line errors.

The tiny random-weight model speaks a small SMILES alphabet (C N O ( ) = 1 .), so that a fair share
of its samples are valid molecules and the figures are not all empty; the FCD and novelty
references are real ChEMBL molecules, the domains hand-made molecules of that alphabet."""
import gzip
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem
from rdkit.Chem.Scaffolds import MurckoScaffold

sys.path.insert(0, str(Path(__file__).parent))

from tiny import tiny_bioxlstm  # noqa: E402

from data_pipeline.tokenizers import SmilesTokenizer  # noqa: E402
from evaluation.base import EvalRequest  # noqa: E402
from evaluation.chem_domains import ChemDomainsSuite, sample_seed  # noqa: E402
from evaluation.chem_unconditional import ChemUnconditionalSuite  # noqa: E402
from evaluation.errors import EvaluationError  # noqa: E402
from evaluation.molecule_data import read_domains, read_molecules, read_smiles_list  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "chem"
VALID, TRAIN = FIXTURES / "chembl31_valid_300.smi.gz", FIXTURES / "chembl31_train_300.smi.gz"
ICST = FIXTURES / "icst_valid_4x60.txt.gz"
STOPS = ["[END]", "."]


def _lines(path):
    with gzip.open(path, "rt") as handle:
        return [line.strip() for line in handle if line.strip()]


ALPHABET = ["[PAD]", "[BEG]", "[END]", "C", "N", "O", "(", ")", "=", "1", "."]
HAND_DOMAINS = [
    "CCO.CCN.CCCO.CCCN.OCCO.NCCN.CC(C)O.CC(C)N.CCOC.CNC.COC.CCC(O)C",
    "C1CCCCC1.C1CCNCC1.C1CCOCC1.OC1CCCCC1.NC1CCCCC1.CC1CCCCC1.C1CCC(O)CC1.C1CCCC1.C1CCNC1.O=C1CCCCC1",
    "CC=O.CC(=O)O.CC(=O)N.OC(=O)CCC(=O)O.CC(=O)C.CCC(=O)O.NC(=O)N.O=CO.CC(=O)OC.CN(C)C=O.C=CC=O",
]



@pytest.fixture(scope="module")
def model():
    return tiny_bioxlstm("molecules", seed=1, dtype=torch.float32, tok=SmilesTokenizer.from_vocab(ALPHABET))


@pytest.fixture()
def hand_domains(tmp_path):
    path = tmp_path / "domains.txt"
    path.write_text("\n".join(HAND_DOMAINS) + "\n")
    return path


@pytest.fixture(scope="module")
def shard_build(tmp_path_factory):
    """A real molecules shard build from a smiles,domain CSV of the ICST fixture (4 domains)."""
    from data_pipeline.build_molecules import build_molecules

    root = tmp_path_factory.mktemp("chem_build")
    csv = root / "domains.csv"
    rows = ["smiles,domain"] + [f"{m},icst{n}" for n, line in enumerate(_lines(ICST)) for m in line.split(".")]
    csv.write_text("\n".join(rows) + "\n")
    build_molecules([str(csv)], str(root / "build"), val_fraction=0.25, seed=0, progress=False)
    return root / "build", csv


def _canonical(smiles):
    mol = Chem.MolFromSmiles(smiles) if smiles else None
    return None if mol is None else Chem.MolToSmiles(mol)


def _independent_metrics(samples, novelty_reference, fcd_reference):
    """Every figure straight from RDKit / fcd_torch, without evaluation.chem_metrics."""
    from fcd_torch import FCD
    from rdkit.Contrib.SA_Score import sascorer

    canonical = [c for c in map(_canonical, samples) if c is not None]
    unique = set(canonical)
    reference = {c for c in map(_canonical, novelty_reference) if c is not None}
    mols = [Chem.MolFromSmiles(c) for c in canonical]
    fcd_valid = [c for c in map(_canonical, fcd_reference) if c is not None]
    fcd = None
    if len(canonical) >= 2 and len(fcd_valid) >= 2:
        fcd = float(FCD(device="cpu", n_jobs=1)(canonical, fcd_valid))
    return {
        "validity": len(canonical) / len(samples),
        "uniqueness": len(unique) / len(canonical) if canonical else None,
        "novelty": len(unique - reference) / len(unique) if unique else None,
        "unique_scaffolds": len({MurckoScaffold.MurckoScaffoldSmiles(mol=m) for m in mols}),
        "unique_fingerprints": len({AllChem.GetMorganFingerprintAsBitVect(m, 2, nBits=1024).ToBitString()
                                    for m in mols}),
        "sa_score": float(np.mean([sascorer.calculateScore(m) for m in mols])) if mols else None,
        "fcd": fcd,
    }


def _run(suite, model):
    units = suite.plan(model)
    return units, suite.summarize(model, [suite.run_unit(model, unit) for unit in units])


UNCONDITIONAL = dict(num_samples=40, chunk_size=16, max_new_tokens=30, reference_size=1000)


def test_unconditional_figures_equal_a_recomputation_from_the_same_samples(model):
    request = EvalRequest(data=str(VALID), quick=True, seed=7, novelty_reference=str(TRAIN),
                          options=UNCONDITIONAL, batch_size=8)
    units, result = _run(ChemUnconditionalSuite(request), model)
    assert [u.seed for u in units] == [7, 9, 11]       # chunks of 16 = 2 batches of 8: seed + 2 c
    # chunking changes nothing: one call with the run's seed draws the same 40 samples
    rows = model.sample_continuations([model.tokenizer.beg_id], 40, 30, temperature=1.0, seed=7,
                                      stop_tokens=STOPS, batch_size=8)
    samples = [model.tokenizer.decode(r) for r in rows]
    expected = _independent_metrics(samples, _lines(TRAIN), _lines(VALID))
    figures = result.figures
    assert result.settings["examples"] == samples[:10]
    assert expected["validity"] >= 0.1 and expected["fcd"] is not None    # the check has teeth
    for name in ("validity", "uniqueness", "novelty", "unique_scaffolds", "unique_fingerprints"):
        assert figures[name].value == pytest.approx(expected[name]), name
    assert figures["fcd"].value == pytest.approx(expected["fcd"], rel=1e-6)
    assert figures["sa_score"].value == pytest.approx(expected["sa_score"])
    valid = round(expected["validity"] * 40)
    assert figures["validity"].n == 40 and figures["uniqueness"].n == valid and figures["fcd"].n == valid
    assert figures["unique_scaffolds_share"].value == pytest.approx(expected["unique_scaffolds"] / valid)
    assert result.settings["truncated"] == sum(len(r) >= 30 for r in rows)
    assert result.tables[0].rows and any("Stop tokens" in note for note in result.notes)


def test_unconditional_on_a_shard_build_uses_its_validation_and_train_splits(model, shard_build):
    build, _ = shard_build
    options = dict(UNCONDITIONAL, num_samples=16)
    _, result = _run(ChemUnconditionalSuite(EvalRequest(data=str(build), seed=3, options=options,
                                                        batch_size=8)), model)
    validation, train = read_molecules(build, "validation"), read_molecules(build, "train")
    assert len(validation) == 60 and len(train) == 180           # 1 of 4 domains held out
    rows = model.sample_continuations([model.tokenizer.beg_id], 16, 30, temperature=1.0, seed=3,
                                      stop_tokens=STOPS, batch_size=8)
    samples = [model.tokenizer.decode(r) for r in rows]
    expected = _independent_metrics(samples, train, validation)
    assert result.settings["novelty_reference_kind"] == "train split of the shard build"
    assert result.settings["reference_molecules"] == 60
    assert result.figures["novelty"].value == pytest.approx(expected["novelty"])
    if expected["fcd"] is None:
        assert result.figures["fcd"].value is None
    else:
        assert result.figures["fcd"].value == pytest.approx(expected["fcd"], rel=1e-6)


def test_unconditional_bad_inputs_give_one_clear_error(model, tmp_path):
    def plan(**request):
        ChemUnconditionalSuite(EvalRequest(**request)).plan(model)

    with pytest.raises(EvaluationError, match="--novelty-reference"):
        plan(data=str(VALID))
    empty = tmp_path / "empty.smi"
    empty.write_text("# nothing\n\n")
    with pytest.raises(EvaluationError, match=f"{empty}: no SMILES found"):
        plan(data=str(empty), novelty_reference=str(TRAIN))
    with pytest.raises(EvaluationError, match="without manifest.json"):
        plan(data=str(tmp_path), novelty_reference=str(TRAIN))
    with pytest.raises(EvaluationError, match="needs data: pass --data"):
        plan(novelty_reference=str(TRAIN))


DOMAINS = dict(ks=[0, 1, 4], num_samples=24, max_domains=2, max_new_tokens=30, reference_size=1000)


def test_domains_figures_equal_a_recomputation_per_domain_and_k(model, hand_domains, tmp_path):
    from fcd_torch import FCD

    request = EvalRequest(data=str(hand_domains), quick=True, seed=5, options=DOMAINS, batch_size=8)
    suite = ChemDomainsSuite(request)
    units, result = _run(suite, model)
    domains = [line.split(".") for line in HAND_DOMAINS][:2]
    assert [u.key for u in units] == ["line 1", "line 2"] and [u.seed for u in units] == [5, 6]
    tok, fcd = model.tokenizer, FCD(device="cpu", n_jobs=1)
    expected = {k: {"fcd": [], "novelty": [], "validity": [], "uniqueness": []} for k in DOMAINS["ks"]}
    for index, molecules in enumerate(domains):
        order = list(molecules)
        random.Random(5 + index).shuffle(order)
        domain_set = {_canonical(m) for m in molecules} - {None}
        reference = [c for c in map(_canonical, molecules) if c is not None]
        for position, k in enumerate(DOMAINS["ks"]):
            context = [tok.beg_id] + [i for m in order[:k] for i in tok.encode(m) + [tok.separator_id]]
            rows = model.sample_continuations(context, 24, 30, temperature=1.0, seed=sample_seed(5 + index, k),
                                              stop_tokens=STOPS, batch_size=8)
            canonical = [c for c in (_canonical(tok.decode(r)) for r in rows) if c is not None]
            got = result.per_item[index]["per_k"][position]
            assert got["context_tokens"] == len(context) and got["samples"] == 24
            unique = set(canonical)
            values = {"validity": len(canonical) / 24,
                      "uniqueness": len(unique) / len(canonical) if canonical else None,
                      "novelty": len(unique - domain_set) / len(unique) if unique else None,
                      "fcd": None}
            if len(canonical) >= 2:
                try:
                    values["fcd"] = float(fcd(canonical, reference))
                except ValueError:                  # a clearly complex root: the suite reports None
                    pass
            for name, value in values.items():
                assert got[name] == pytest.approx(value, rel=1e-6) if value is not None else got[name] is None, name
                expected[k][name].append(value)
    assert any(v is not None for k in expected for v in expected[k]["fcd"])     # FCD really checked
    for k in DOMAINS["ks"]:
        for name in ("fcd", "novelty", "validity", "uniqueness"):
            values = [v for v in expected[k][name] if v is not None]
            figure = result.figures[f"{name}_k{k}"]
            assert figure.n == len(values)
            if values:
                assert figure.value == pytest.approx(float(np.mean(values)), rel=1e-9)
            if len(values) > 1:
                assert figure.interval == pytest.approx(1.96 * np.std(values, ddof=1) / math.sqrt(len(values)))
    assert [row[0] for row in result.tables[0].rows] == DOMAINS["ks"]
    plots = suite.plot(result, tmp_path)
    assert plots and plots[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_domains_from_csv_and_shard_build_match_the_icst_lines(shard_build):
    build, csv = shard_build
    lines = read_domains(ICST)
    from_csv = read_domains(csv)
    assert [d.molecules for d in from_csv] == [d.molecules for d in lines]
    assert [d.name for d in from_csv] == ["icst0", "icst1", "icst2", "icst3"]
    (held_out,) = read_domains(build)
    canonical_lines = [sorted(_canonical(m) for m in d.molecules) for d in lines]
    assert sorted(held_out.molecules) in canonical_lines        # the build stores canonical SMILES


def test_domains_bad_inputs_give_one_clear_error(model, tmp_path):
    def plan(data, **options):
        return ChemDomainsSuite(EvalRequest(data=str(data), quick=True, options=options)).plan(model)

    small = tmp_path / "small.txt"
    small.write_text("CCO.CCN.CCC.CCCO\nCCO\nC1CCCCC1.CC1CCCCC1.CCC1CCCCC1.CCCC1CCCCC1\n")
    with pytest.raises(EvaluationError, match=rf"{small} line 2: domain 'line 2' has 1 molecules, fewer "
                                              r"than the 3 needed; pass smaller ks"):
        plan(small, ks=[0, 1])
    kept = plan(small, ks=[0, 1], skip_small_domains=True)
    assert [u.key for u in kept] == ["line 1", "line 3"]
    with pytest.raises(EvaluationError, match="fewer than the 10 needed"):
        plan(small)                                             # the quick ks go up to 8
    no_columns = tmp_path / "table.csv"
    no_columns.write_text("smiles,label\nCCO,a\n")
    with pytest.raises(EvaluationError, match=rf"{no_columns} line 1: a domain CSV needs a header with "
                                              r"columns 'smiles' and 'domain'"):
        plan(no_columns)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(EvaluationError, match=f"{empty}: no domains found"):
        plan(empty)
    with pytest.raises(EvaluationError, match="option ks="):
        plan(small, ks=["a"])


def test_smiles_list_reader_skips_header_comments_and_reads_gzip(tmp_path):
    plain = tmp_path / "list.smi"
    plain.write_text("smiles\n# a comment\nCCO ethanol\n\nc1ccccc1\n")
    packed = tmp_path / "list.smi.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert read_smiles_list(plain) == read_smiles_list(packed) == ["CCO", "c1ccccc1"]
    assert len(read_smiles_list(VALID)) == 300
