"""Chemistry metrics on hand-made SMILES lists whose answers are known, and FCD recomputed
independently from fcd_torch's ChemNet activations."""
import gzip
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem
from scipy import linalg

from evaluation import chem_metrics as m

FIXTURES = Path(__file__).parent / "fixtures" / "chem"



def _fixture(name, count):
    with gzip.open(FIXTURES / name, "rt") as handle:
        return [line.strip() for line in handle][:count]


def test_validity_counts_parsed_smiles_and_empty_is_invalid():
    smiles = ["CCO", "OCC", "C1CC", "", "c1ccccc1", "Cc1ccccc1", "C(", "N#N"]
    # invalid: 'C1CC' (unclosed ring), '' (empty), 'C(' (unclosed branch)
    assert m.validity(smiles) == pytest.approx(5 / 8)
    assert m.validity([]) is None
    assert m.canonical("OCC") == m.canonical("CCO") == "CCO"
    assert m.canonical("") is None and m.canonical("C1CC") is None


def test_uniqueness_and_novelty_on_canonical_forms():
    smiles = ["CCO", "OCC", "C(C)O", "c1ccccc1", "C1=CC=CC=C1", "Cc1ccccc1", "C1CC"]
    # valid 6; distinct molecules: ethanol, benzene (aromatic and Kekule spellings), toluene
    assert m.uniqueness(smiles) == pytest.approx(3 / 6)
    reference = m.canonical_set(["OCC", "CCN"])          # written differently from the samples
    assert reference == {"CCO", "CCN"}
    assert m.novelty(smiles, reference) == pytest.approx(2 / 3)       # benzene, toluene are new
    assert m.novelty(smiles, m.canonical_set(["C1=CC=CC=C1", "c1ccc(C)cc1", "OCC"])) == 0.0
    assert m.novelty(["C1CC"], reference) is None


def test_scaffolds_benzene_and_toluene_share_one():
    smiles = ["c1ccccc1", "Cc1ccccc1", "CCc1ccccc1", "C1CCNCC1", "CC1CCNCC1", "CCO", "CCCC", "C1CC"]
    # scaffolds: benzene (x3), piperidine (x2), '' for the acyclic ethanol and butane
    count, share = m.unique_scaffolds(smiles)
    assert count == 3
    assert share == pytest.approx(3 / 7)
    assert sorted(set(m.scaffolds(smiles))) == ["", "C1CCNCC1", "c1ccccc1"]


def test_unique_fingerprints_count_distinct_bit_vectors():
    smiles = ["CCO", "OCC", "c1ccccc1", "Cc1ccccc1", "CCCCCCCCCC", "CCCCCCCCCCC", "C1CC"]
    # independently: the classic RDKit Morgan API, radius 2, 1024 bits
    bits = {AllChem.GetMorganFingerprintAsBitVect(Chem.MolFromSmiles(s), 2, nBits=1024).ToBitString()
            for s in smiles if Chem.MolFromSmiles(s) is not None}
    assert m.unique_fingerprints(smiles) == len(bits)
    # the two long alkanes share every radius-2 environment (CH3, CH2 next to CH3, CH2 chains)
    assert len(bits) == 4


def test_sa_score_of_simple_and_complex_molecules():
    assert m.sascorer() is not None, "this RDKit wheel ships Contrib/SA_Score"
    paracetamol, benzene = "CC(=O)Nc1ccc(O)cc1", "c1ccccc1"
    erythromycin = ("CC[C@H]1OC(=O)[C@H](C)[C@@H](O[C@H]2C[C@@](C)(OC)[C@@H](O)[C@H](C)O2)[C@H](C)"
                    "[C@@H](O[C@@H]2O[C@H](C)C[C@H](N(C)C)[C@H]2O)[C@](C)(O)C[C@@H](C)C(=O)[C@H](C)"
                    "[C@@H](O)[C@]1(C)O")
    scores = m.sa_scores([paracetamol, benzene, erythromycin, "C1CC"])
    assert len(scores) == 3
    assert all(1.0 <= s <= 10.0 for s in scores)
    assert scores[0] < 2.5 and scores[1] < 2.5          # small drug-like molecules: easy
    assert scores[2] > 5.0                              # a macrolide natural product: hard
    assert m.mean_sa_score([paracetamol, benzene]) == pytest.approx((scores[0] + scores[1]) / 2)


def _independent_frechet(a, b):
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b)) from raw activations (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root.real))


def test_fcd_of_a_set_with_itself_is_zero_and_other_sets_are_farther():
    chembl = _fixture("chembl31_valid_300.smi.gz", 60)
    assert abs(m.fcd(chembl, chembl)) < 1e-3            # fcd_torch gives ~1e-6 here (sqrtm noise)
    alkanes = ["C" * n for n in range(1, 30)] + ["C" * n + "O" for n in range(1, 30)]
    other_chembl = _fixture("chembl31_train_300.smi.gz", 60)
    close, far = m.fcd(chembl, other_chembl), m.fcd(chembl, alkanes)
    assert far > 10.0                                   # straight chains are nothing like drugs
    assert 0 < close < far
    assert m.fcd(["CCO", "C1CC"], chembl) is None       # one valid molecule: no covariance


def test_fcd_equals_an_independent_frechet_distance_of_the_activations():
    first, second = _fixture("chembl31_valid_300.smi.gz", 40), _fixture("chembl31_train_300.smi.gz", 50)
    acts_first = m.chemnet_activations([m.canonical(s) for s in first])
    acts_second = m.chemnet_activations([m.canonical(s) for s in second])
    assert acts_first.shape == (40, 512)
    expected = _independent_frechet(acts_first, acts_second)
    assert m.fcd(first, second) == pytest.approx(expected, rel=1e-6)
    # and fcd_torch's own front end (canonicalising itself) agrees
    assert m.fcd_model()(first, second) == pytest.approx(expected, rel=1e-6)
