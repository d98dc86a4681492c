"""Normalised Hamming distance after the official global alignment: hand-aligned pairs with a
known answer, and a pure-Python Needleman-Wunsch (match 1, mismatch -1, gap -1) as the
independent reference for the optimal score and the distance of random pairs."""
from __future__ import annotations

import random

import pytest

from evaluation.alignment import (aligned_hamming, aligned_pair, family_distances, min_median,
                                  normalized_hamming)


@pytest.mark.parametrize("reference, query, expected", [
    ("MKTAYIAKQR", "MKTAYIAKQR", 0.0),            # identical
    ("MKTAYIAKQR", "MKTAYWAKQR", 1 / 10),         # one substitution in 10 columns
    ("MKTAYIAKQR", "MKTAYGIAKQR", 1 / 11),        # one inserted residue: 11 columns, 1 gap
    ("MKTAYIAKQR", "MKTAYAKQR", 1 / 10),          # one deleted residue: 10 columns, 1 gap
    ("MKTAYIAKQR", "MKTAY", 5 / 10),              # a fragment: end gaps count
    ("MKTAYIAKQR", "MKWAYIAKQRGG", 3 / 12),       # substitution + two appended residues
])
def test_hand_aligned_pairs(reference, query, expected):
    assert normalized_hamming(reference, query) == pytest.approx(expected, abs=1e-12)


def test_rows_are_an_alignment_and_the_formula_counts_differing_columns():
    top, bottom = aligned_pair("MKTAYIAKQR", "MKTAYGIAKQR")
    assert top.replace("-", "") == "MKTAYIAKQR" and bottom.replace("-", "") == "MKTAYGIAKQR"
    assert aligned_hamming("AC-D", "ACED") == 0.25
    assert aligned_hamming("ACGD", "TCG-") == 0.5
    with pytest.raises(ValueError):
        aligned_hamming("AC", "A")


def needleman_wunsch(a: str, b: str):
    """Optimal global score with match 1, mismatch -1, gap -1, and every (matches, columns) pair
    an optimal alignment can have (co-optimal alignments may differ in length)."""
    n, m = len(a), len(b)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    outcomes = [[set() for _ in range(m + 1)] for _ in range(n + 1)]
    outcomes[0][0] = {(0, 0)}
    for i in range(n + 1):
        for j in range(m + 1):
            if i == 0 and j == 0:
                continue
            moves = []
            if i and j:
                same = a[i - 1] == b[j - 1]
                moves.append((score[i - 1][j - 1] + (1 if same else -1), i - 1, j - 1, int(same)))
            if i:
                moves.append((score[i - 1][j] - 1, i - 1, j, 0))
            if j:
                moves.append((score[i][j - 1] - 1, i, j - 1, 0))
            best = max(move[0] for move in moves)
            score[i][j] = best
            outcomes[i][j] = {(matches + hit, columns + 1) for s, pi, pj, hit in moves if s == best
                              for matches, columns in outcomes[pi][pj]}
    return score[n][m], outcomes[n][m]


def test_random_pairs_against_needleman_wunsch():
    from evaluation.alignment import official_aligner

    rng = random.Random(7)
    letters = "ACDEFGHIKLMNPQRSTVWY"
    for _ in range(60):
        a = "".join(rng.choice(letters[:rng.randint(3, 20)]) for _ in range(rng.randint(1, 14)))
        b = "".join(rng.choice(letters[:rng.randint(3, 20)]) for _ in range(rng.randint(1, 14)))
        best, outcomes = needleman_wunsch(a, b)
        assert official_aligner().score(a, b) == best
        top, bottom = aligned_pair(a, b)
        matches = sum(x == y for x, y in zip(top, bottom))
        assert (matches, len(top)) in outcomes            # an optimal alignment
        assert 2 * matches - len(top) == best             # score = matches - (columns - matches)
        assert normalized_hamming(a, b) == pytest.approx(1 - matches / len(top), abs=1e-12)
        if len({1 - m / c for m, c in outcomes}) == 1:     # unique distance: it must be that one
            (m, c), = outcomes
            assert normalized_hamming(a, b) == pytest.approx(1 - m / c, abs=1e-12)


def test_family_distances_min_median_and_exclusion():
    family = ["MKTAYIAKQR", "MKTAYWAKQR", "MKTAYAKQR", "MKTAY"]
    distances = family_distances("MKTAYIAKQR", family)
    assert distances == pytest.approx([0.0, 0.1, 0.1, 0.5])
    assert min_median(distances) == (0.0, pytest.approx(0.1))
    assert family_distances("MKTAYIAKQR", family, exclude=0) == pytest.approx([0.1, 0.1, 0.5])
    assert min_median([]) == (None, None)
    with pytest.raises(ValueError):
        normalized_hamming("", "MK")
