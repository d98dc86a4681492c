"""Bio-xLSTM evaluation: the paper's own measures, on exported models and inside training.

Suites (one module each; `list_suites()`; `get_suite(name)` rejects unknown names with the list):
    protein-icl          perplexity of the k-th homolog given k-1 before it, FIM span perplexity
    protein-generation   homology-conditioned samples scored against their family
    chem-unconditional   validity, uniqueness, novelty, FCD, scaffolds, fingerprints, SA score
    chem-domains         in-context generation per held-out molecular domain (k context molecules)
    dna-lm               CLM / MLM loss and accuracy, RC consistency, post-hoc conjoined score

This layer sits between `modeling` / `data_pipeline` and `pretrain`: it imports the first two and
never `pretrain`, so the trainer can import it for in-training evaluation.
"""
from __future__ import annotations

import importlib

from evaluation.errors import EvaluationError

# name -> "module:Class"; modules are imported only when a suite is asked for (RDKit, pyhmmer,
# fcd_torch are heavy).
SUITES = {
    "protein-icl": "evaluation.protein_icl:ProteinICLSuite",
    "protein-generation": "evaluation.protein_generation:ProteinGenerationSuite",
    "chem-unconditional": "evaluation.chem_unconditional:ChemUnconditionalSuite",
    "chem-domains": "evaluation.chem_domains:ChemDomainsSuite",
    "dna-lm": "evaluation.dna_lm:DNALMSuite",
}

QUICK_SUITES = {
    "protein": ("protein-icl", "protein-generation"),
    "molecules": ("chem-unconditional", "chem-domains"),
    "dna": ("dna-lm",),
}


def list_suites() -> list[str]:
    return list(SUITES)


def get_suite(name: str):
    """The suite class registered under `name`."""
    if name not in SUITES:
        raise EvaluationError(f"unknown suite {name!r}; known suites: {', '.join(SUITES)}")
    module_name, class_name = SUITES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)
