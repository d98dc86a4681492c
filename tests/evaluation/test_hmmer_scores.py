"""HMMER bit scores against a profile of the family alignment: real family members score far
above the same sequences shuffled (same composition), for an A3M and a Stockholm family."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from evaluation.errors import EvaluationError
from evaluation.families import load_families
from evaluation.hmmer_scores import a3m_match_rows, bit_scores, build_profile

FIXTURES = Path(__file__).parent / "fixtures" / "protein"


def family(file_name: str):
    return load_families(str(FIXTURES / file_name), "test")[0]


@pytest.mark.parametrize("file_name", ["phyllin.a3m", "ribosomal_L29.sto"])
def test_members_score_far_above_shuffled_sequences(file_name):
    fam = family(file_name)
    hmm = build_profile(fam.source, fam.alignment_format)
    rng = random.Random(3)
    shuffled = ["".join(rng.sample(s, len(s))) for s in fam.sequences for _ in range(3)]
    assert sorted(shuffled[0]) == sorted(fam.sequences[0])
    scores = bit_scores(hmm, fam.sequences + shuffled)
    members, controls = scores[:len(fam.sequences)], scores[len(fam.sequences):]
    assert min(members) > 50.0                      # tens of bits: real homology
    assert max(controls) < 20.0
    assert min(members) > max(controls) + 40.0


def test_score_of_a_sequence_does_not_depend_on_what_is_searched_with_it():
    fam = family("ribosomal_L29.sto")
    hmm = build_profile(fam.source, fam.alignment_format)
    together = bit_scores(hmm, fam.sequences)
    alone = [bit_scores(hmm, [s])[0] for s in fam.sequences]
    assert together == pytest.approx(alone, rel=1e-6)
    assert bit_scores(hmm, ["", "---"]) == [0.0, 0.0]   # nothing to search: no hit, score 0


def test_a3m_rows_keep_only_match_columns():
    rows = a3m_match_rows(FIXTURES / "phyllin.a3m")
    representative = family("phyllin.a3m").sequences[0]
    assert rows[0][1] == representative
    assert {len(row) for _, row in rows} == {len(representative)}
    assert all(not any(c.islower() or c == "." for c in row) for _, row in rows)


def test_bad_alignments_give_one_line(tmp_path):
    ragged = tmp_path / "ragged.a3m"
    ragged.write_text(">a\nMKTAY\n>b\nMKT\n")
    with pytest.raises(EvaluationError, match="ragged.a3m: A3M rows have 2 different numbers") as err:
        build_profile(ragged, "a3m")
    assert "\n" not in str(err.value)
    with pytest.raises(EvaluationError, match="needs an A3M or Stockholm"):
        build_profile(FIXTURES / "disintegrin.fasta", None)
    broken = tmp_path / "broken.sto"
    broken.write_text("# STOCKHOLM 1.0\na MKTAY\nb MKT\n//\n")
    with pytest.raises(EvaluationError, match="broken.sto: cannot read the alignment") as err:
        build_profile(broken, "stockholm")
    assert "\n" not in str(err.value)
