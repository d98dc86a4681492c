"""Normalised Hamming distance after a global alignment: how far a protein is from its family.

As the official Prot-xLSTM generation evaluation (`generation_utils/score_hamming.py`, DESIGN.md
section 12): Biopython `PairwiseAligner` in global mode with match 1, mismatch -1, gap open -1,
gap extend -1 (a linear gap cost of -1), the first optimal alignment Biopython returns, and

    distance = (mismatched columns + gap columns) / alignment length

i.e. the share of alignment columns whose two characters differ (a gap column always differs;
the official `hamming_str` compares the two aligned strings position by position and divides by
their common length). End gaps count like any gap, so a fragment of a member is not distance 0.
"""
from __future__ import annotations

import statistics
from functools import lru_cache
from typing import Optional, Sequence


@lru_cache(maxsize=1)
def official_aligner():
    from Bio.Align import PairwiseAligner

    return PairwiseAligner(mode="global", match_score=1, mismatch_score=-1,
                           open_gap_score=-1, extend_gap_score=-1)


def aligned_pair(reference: str, query: str) -> tuple[str, str]:
    """The two rows ('-' for gaps) of the first optimal global alignment of reference and query."""
    alignment = official_aligner().align(reference, query)[0]
    return alignment[0], alignment[1]


def aligned_hamming(top: str, bottom: str) -> float:
    """Share of columns of two aligned rows (same length) whose characters differ."""
    if len(top) != len(bottom) or not top:
        raise ValueError(f"aligned rows must be non-empty and of one length, got {len(top)} and {len(bottom)}")
    return sum(a != b for a, b in zip(top, bottom)) / len(top)


def normalized_hamming(reference: str, query: str) -> float:
    """Normalised Hamming distance of two unaligned sequences after the official global alignment."""
    if not reference or not query:
        raise ValueError("normalised Hamming distance needs two non-empty sequences")
    return aligned_hamming(*aligned_pair(reference, query))


def family_distances(query: str, family: Sequence[str], exclude: Optional[int] = None) -> list[float]:
    """Distance of `query` to every family member, skipping member index `exclude` (a natural
    member scored against the rest of its family)."""
    return [normalized_hamming(member, query) for n, member in enumerate(family) if n != exclude]


def min_median(distances: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    """(min, median) of the distances; (None, None) when there are none."""
    if not distances:
        return None, None
    return min(distances), float(statistics.median(distances))
