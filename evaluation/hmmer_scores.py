"""HMMER bit scores of sequences against a profile HMM of their family's alignment (pyhmmer, CPU).

As the official Prot-xLSTM generation evaluation (`generation_utils/score_hmmer.py`, DESIGN.md
section 12): the profile is built with pyhmmer's default `Builder` from the family alignment with
insertions dropped (A3M: lowercase letters and '.' removed, '-' kept, so every row has the match
columns only; Stockholm: read as it is, one column per alignment column); sequences are searched
with the bias filter off and the three acceleration filters open (F1 = F2 = F3 = 1.0, i.e. every
sequence reaches the full Forward score); a sequence's score is the bit score of its hit, 0 when
it has no hit. E-values count the sequences searched together (HMMER's default Z), which only
decides whether a weak hit is kept; the bit score itself does not depend on the others.
"""
from __future__ import annotations

import string
from pathlib import Path
from typing import Sequence

from evaluation.errors import EvaluationError

_A3M_INSERTIONS = str.maketrans("", "", string.ascii_lowercase + ".")
GAP_CHARACTERS = str.maketrans("", "", "-.")


def _amino():
    from pyhmmer import easel

    return easel.Alphabet.amino()


def a3m_match_rows(path: str | Path) -> list[tuple[str, str]]:
    """(name, row) of an A3M file with insertions removed; every row must then have one length."""
    from data_pipeline.readers import open_text

    rows: list[tuple[str, list[str]]] = []
    with open_text(path) as handle:
        for line in handle:
            if line.startswith(">"):
                rows.append((line[1:].split()[0] if line[1:].strip() else f"row{len(rows)}", []))
            elif line.strip() and not line.startswith("#") and rows:
                rows[-1][1].append("".join(line.split()))
    result = [(name, "".join(parts).translate(_A3M_INSERTIONS)) for name, parts in rows]
    lengths = {len(row) for _, row in result}
    if len(lengths) != 1:
        raise EvaluationError(f"{path}: A3M rows have {len(lengths)} different numbers of match columns "
                              f"({sorted(lengths)[:5]}); each row must have the same count of upper-case "
                              "letters and '-' (insertions lower-case)")
    return result


def read_digital_msa(path: str | Path, alignment_format: str):
    """The family alignment as a pyhmmer digital MSA (named, as the Builder needs)."""
    from pyhmmer import easel

    amino = _amino()
    try:
        if alignment_format == "a3m":
            rows = a3m_match_rows(path)
            sequences = [easel.TextSequence(name=str(n).encode(), sequence=row) for n, (_, row) in enumerate(rows)]
            msa = easel.TextMSA(name=b"family", sequences=sequences).digitize(amino)
        elif alignment_format == "stockholm":
            with easel.MSAFile(str(path), digital=True, alphabet=amino, format="stockholm") as handle:
                msa = handle.read()
            if msa is None:
                raise EvaluationError(f"{path}: no alignment in this Stockholm file")
            if not msa.name:
                msa.name = b"family"
        else:
            raise EvaluationError(f"{path}: no alignment format {alignment_format!r}; a profile HMM "
                                  "needs an A3M or Stockholm family file")
    except (ValueError, OSError) as err:  # easel parse errors, unknown residues
        raise EvaluationError(f"{path}: cannot read the alignment for a profile HMM ({err}); "
                              "check the file is a valid A3M / Stockholm alignment of amino acids") from None
    return msa


def build_profile(path: str | Path, alignment_format: str):
    """Profile HMM of the family alignment in `path` (pyhmmer's default builder)."""
    from pyhmmer import plan7

    amino = _amino()
    hmm, _, _ = plan7.Builder(amino).build_msa(read_digital_msa(path, alignment_format), plan7.Background(amino))
    return hmm


def bit_scores(hmm, sequences: Sequence[str]) -> list[float]:
    """Bit score of each sequence's hit against `hmm` (0.0 without a hit), all searched together.
    Gap characters are removed first; an empty sequence scores 0."""
    from pyhmmer import easel, plan7

    amino = _amino()
    cleaned = [s.translate(GAP_CHARACTERS).upper() for s in sequences]
    queries = [easel.TextSequence(name=str(n).encode(), sequence=s) for n, s in enumerate(cleaned) if s]
    scores = [0.0] * len(sequences)
    if not queries:
        return scores
    pipeline = plan7.Pipeline(amino, background=plan7.Background(amino), bias_filter=False,
                              F1=1.0, F2=1.0, F3=1.0)
    for hit in pipeline.search_hmm(hmm, easel.TextSequenceBlock(queries).digitize(amino)):
        name = hit.name.decode() if isinstance(hit.name, bytes) else hit.name
        scores[int(name)] = float(hit.score)
    return scores
