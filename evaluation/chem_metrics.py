"""Molecule-generation metrics as plain functions on lists of SMILES (Chem-xLSTM `metrics.py`).

Every metric works on RDKit canonical SMILES, so 'CCO' and 'OCC' are one molecule; reference
sets are canonicalised the same way before novelty is measured. An empty string is invalid
(RDKit would parse it as an empty molecule). Definitions (DESIGN.md section 12):
- validity: valid / all; uniqueness: unique canonical / valid; novelty: unique canonical not in
  the reference / unique canonical;
- unique Bemis-Murcko scaffolds (RDKit `MurckoScaffold`; the empty scaffold of an acyclic
  molecule counts as one, as in the official code) and unique Morgan fingerprints (radius 2,
  1024 bits: distinct bit vectors) over the valid molecules;
- SA score (RDKit Contrib `sascorer`, 1 = easy .. 10 = hard), mean over the valid molecules;
- FCD (`fcd_torch`: the ChemNet weights ship inside the package, nothing is downloaded; CPU,
  one worker), between the valid molecules of two sets; it needs two valid molecules per set.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

MORGAN_RADIUS, MORGAN_BITS = 2, 1024
FCD_MIN_MOLECULES = 2


def _quiet_rdkit() -> None:
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")


def canonical(smiles: str):
    """RDKit canonical SMILES, or None when RDKit cannot parse it (or it is empty)."""
    return parse(smiles)[0]


def parse(smiles: str):
    """(canonical SMILES, Mol) or (None, None) for an invalid or empty SMILES."""
    from rdkit import Chem

    _quiet_rdkit()
    text = smiles.strip() if isinstance(smiles, str) else ""
    if not text:
        return None, None
    mol = Chem.MolFromSmiles(text)
    if mol is None:
        return None, None
    return Chem.MolToSmiles(mol), mol


@dataclass
class ParsedSet:
    """A list of SMILES parsed once: the canonical form and Mol of each valid one, in input order."""

    total: int
    canonical: list = field(default_factory=list)
    mols: list = field(default_factory=list)

    @property
    def unique(self) -> set:
        return set(self.canonical)


def parse_all(smiles: Iterable[str]) -> ParsedSet:
    parsed = ParsedSet(0)
    for item in smiles:
        parsed.total += 1
        text, mol = parse(item)
        if text is not None:
            parsed.canonical.append(text)
            parsed.mols.append(mol)
    return parsed


def canonical_set(smiles: Iterable[str]) -> set:
    """The distinct canonical SMILES of the valid entries (a novelty reference)."""
    return parse_all(smiles).unique


def _as_parsed(smiles) -> ParsedSet:
    return smiles if isinstance(smiles, ParsedSet) else parse_all(smiles)


def _ratio(part: int, whole: int) -> Optional[float]:
    return part / whole if whole else None


def validity(smiles) -> Optional[float]:
    """Share of the SMILES RDKit parses; None for an empty list."""
    parsed = _as_parsed(smiles)
    return _ratio(len(parsed.canonical), parsed.total)


def uniqueness(smiles) -> Optional[float]:
    """Distinct canonical SMILES / valid ones; None without a valid one."""
    parsed = _as_parsed(smiles)
    return _ratio(len(parsed.unique), len(parsed.canonical))


def novelty(smiles, reference: set) -> Optional[float]:
    """Distinct canonical SMILES absent from `reference` (a set of canonical SMILES, see
    `canonical_set`) / distinct canonical SMILES; None without a valid one."""
    unique = _as_parsed(smiles).unique
    return _ratio(len(unique - reference), len(unique))


def scaffolds(smiles) -> list:
    """Bemis-Murcko scaffold SMILES of each valid molecule ('' for an acyclic one)."""
    from rdkit import Chem
    from rdkit.Chem.Scaffolds import MurckoScaffold

    return [Chem.MolToSmiles(MurckoScaffold.GetScaffoldForMol(mol)) for mol in _as_parsed(smiles).mols]


def unique_scaffolds(smiles) -> tuple:
    """(number of distinct scaffolds, that number / valid molecules or None)."""
    parsed = _as_parsed(smiles)
    count = len(set(scaffolds(parsed)))
    return count, _ratio(count, len(parsed.canonical))


def unique_fingerprints(smiles) -> int:
    """Number of distinct Morgan bit vectors (radius 2, 1024 bits) among the valid molecules."""
    from rdkit.Chem import rdFingerprintGenerator

    generator = rdFingerprintGenerator.GetMorganGenerator(radius=MORGAN_RADIUS, fpSize=MORGAN_BITS)
    return len({generator.GetFingerprint(mol).ToBitString() for mol in _as_parsed(smiles).mols})


def sascorer():
    """RDKit's Contrib SA scorer module, or None when this RDKit build does not ship it."""
    try:
        from rdkit.Contrib.SA_Score import sascorer as module
    except ImportError:
        import os
        import sys

        from rdkit import RDConfig

        folder = os.path.join(RDConfig.RDContribDir, "SA_Score")
        if not os.path.isfile(os.path.join(folder, "sascorer.py")):
            return None
        sys.path.append(folder)
        try:
            import sascorer as module
        except ImportError:
            return None
    return module


def sa_scores(smiles) -> Optional[list]:
    """SA score of each valid molecule; None when RDKit ships no sascorer."""
    scorer = sascorer()
    if scorer is None:
        return None
    return [float(scorer.calculateScore(mol)) for mol in _as_parsed(smiles).mols]


def mean_sa_score(smiles) -> Optional[float]:
    scores = sa_scores(smiles)
    return math.fsum(scores) / len(scores) if scores else None


_FCD = None


def fcd_model():
    """fcd_torch's FCD on CPU with one worker, loaded once per process."""
    global _FCD
    if _FCD is None:
        from fcd_torch import FCD

        _FCD = FCD(device="cpu", n_jobs=1)
    return _FCD


def chemnet_activations(canonical_smiles: Sequence[str]):
    """ChemNet's penultimate activations (n, 512) of valid SMILES (fcd_torch's own features)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # fcd_torch uses np.row_stack (deprecated)
        return fcd_model().get_predictions(list(canonical_smiles))


def fcd_statistics(smiles) -> Optional[dict]:
    """{'mu', 'sigma'} of a set's valid molecules, or None with fewer than two of them."""
    parsed = _as_parsed(smiles)
    if len(parsed.canonical) < FCD_MIN_MOLECULES:
        return None
    activations = chemnet_activations(parsed.canonical)
    import numpy as np

    return {"mu": activations.mean(0), "sigma": np.cov(activations.T), "n": len(parsed.canonical)}


def frechet_distance(stats_a: Optional[dict], stats_b: Optional[dict]) -> Optional[float]:
    """fcd_torch's Frechet distance of two `fcd_statistics`; None when either is None."""
    if stats_a is None or stats_b is None:
        return None
    from fcd_torch.utils import calculate_frechet_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # sqrtm: its deprecated disp argument, singular small sets
        return float(calculate_frechet_distance(stats_a["mu"], stats_a["sigma"], stats_b["mu"],
                                                stats_b["sigma"]))


def fcd(generated, reference) -> Optional[float]:
    """Frechet ChemNet Distance between the valid molecules of two SMILES lists; None when
    either has fewer than two valid molecules."""
    return frechet_distance(fcd_statistics(generated), fcd_statistics(reference))
