"""Hypothesis strategies for the parser fuzzers: valid inputs, their mutations, raw bytes.

Structured strategies draw inputs a parser must accept (so the fuzzers reach deep code
paths); `mutated` then damages them the way real files get damaged (a lost newline, a
stray character, a cut gzip, a foreign encoding). The checks at the bottom state what every
outcome must look like: a build whose stored content is clean, or one project error that
names the input and leaves no output behind.
"""
from __future__ import annotations

import gzip
import os
import re
import string
from pathlib import Path

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st

from data_pipeline.errors import DataPipelineError
from data_pipeline.manifest import read_manifest
from data_pipeline.shards import ShardReader

# Examples per fuzzer in CI; BIOXLSTM_FUZZ_SCALE=20 BIOXLSTM_FUZZ_RANDOM=1 runs a longer,
# non-repeating campaign locally (the CI run is derandomized so it cannot flake).
SCALE = float(os.environ.get("BIOXLSTM_FUZZ_SCALE", "1"))


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, database=None,
                    derandomize=not os.environ.get("BIOXLSTM_FUZZ_RANDOM"),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


NAME_ALPHABET = string.ascii_letters + string.digits + "_.:-"
DNA_ALPHABET = "ACGTNacgtnRYKMSWBDHVU"
PROTEIN_LETTERS = "LAGVSERTIDPKQNFYMHWCXBUZO"
PROTEIN_ALPHABET = PROTEIN_LETTERS + PROTEIN_LETTERS.lower()
STORED_DNA = re.compile(r"[ACGTN]+")
STORED_PROTEIN = re.compile(f"[{PROTEIN_LETTERS}.\\-]+")

# What damaged files hold: format punctuation in the wrong place, control characters,
# look-alike Unicode (dotless i and the ff ligature upper-case to valid residues), a BOM,
# characters whose code point is below the vocabulary size ('!' and '#' vs protein ids).
TRICKY = [">", ">\n", "\n", "\r", "\r\n", "\t", " ", "#", "# STOCKHOLM 1.0\n", "//", "//\n", "-",
          ".", "!", "#", "*", "\x00", "\x05", "\x0f", "\x1c", "\x7f", "\u00e9", "\ufb00", "\u0131",
          "\ufeff", "\u2028", ",", '"', "|", "N" * 40, "=", "[", "]", "(", "%", "\\"]

names = st.text(NAME_ALPHABET, min_size=1, max_size=10)


@st.composite
def mutated(draw, text: str, extra: list[str] = ()) -> str:
    """`text` with 1..4 local edits: insert, delete, replace, duplicate a line, truncate."""
    pieces = TRICKY + list(extra)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "insert", "delete", "replace", "dup_line", "truncate"]))
        chunk = draw(st.sampled_from(pieces) | st.text(max_size=4))
        if kind == "insert":
            text = text[:position] + chunk + text[position:]
        elif kind == "delete":
            text = text[:position] + text[position + draw(st.integers(1, 8)):]
        elif kind == "replace":
            text = text[:position] + chunk + text[position + len(chunk):]
        elif kind == "dup_line":
            lines = text.split("\n")
            line = draw(st.integers(0, len(lines) - 1))
            text = "\n".join(lines[:line + 1] + lines[line:])
        else:
            text = text[:position]
    return text


@st.composite
def file_bytes(draw, text: str) -> bytes:
    """UTF-8 bytes of `text`, sometimes with an invalid byte, sometimes gzipped (maybe cut)."""
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        position = draw(st.integers(0, len(data)))
        data = data[:position] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + data[position:]
    if draw(st.booleans()):
        data = gzip.compress(data, mtime=0)
        if draw(st.integers(0, 3)) == 0:
            data = data[:draw(st.integers(0, len(data) - 1))]
    return data


def render_fasta(records, width: int, newline: str, descriptions: bool) -> str:
    lines = []
    for name, sequence in records:
        lines.append(f">{name}" + (" some description" if descriptions else ""))
        lines.extend(sequence[i:i + width] for i in range(0, len(sequence), width))
    return newline.join(lines) + newline


@st.composite
def fasta_records(draw, alphabet: str, max_records: int = 4, max_len: int = 200):
    count = draw(st.integers(1, max_records))
    record_names = draw(st.lists(names, min_size=count, max_size=count, unique=True))
    return [(name, draw(st.text(alphabet, min_size=1, max_size=max_len))) for name in record_names]


@st.composite
def fasta_text(draw, alphabet: str, max_records: int = 4, max_len: int = 200):
    """(records, FASTA text) with random line width, CRLF or LF, header descriptions."""
    records = draw(fasta_records(alphabet, max_records, max_len))
    text = render_fasta(records, draw(st.integers(1, 80)), draw(st.sampled_from(["\n", "\r\n"])),
                        draw(st.booleans()))
    return records, text


@st.composite
def cluster_input(draw):
    """(FASTA text, cluster table text): UniProt-style headers, a table over their accessions."""
    count = draw(st.integers(1, 6))
    accessions = [f"P{index:05d}" for index in range(count)]
    records = [(f"sp|{acc}|{acc}_HUMAN" if draw(st.booleans()) else acc,
                draw(st.text(PROTEIN_ALPHABET, min_size=1, max_size=60))) for acc in accessions]
    fasta = render_fasta(records, draw(st.integers(10, 60)), "\n", draw(st.booleans()))
    members = draw(st.lists(st.sampled_from(accessions), min_size=1, max_size=count, unique=True))
    reps = draw(st.lists(st.sampled_from(members), min_size=len(members), max_size=len(members)))
    table = "".join(f"{rep}\t{member}\n" for rep, member in zip(reps, members))
    return fasta, table


@st.composite
def alignment(draw):
    """(format, sequences as stored after parsing, file text): a Stockholm or A3M family."""
    count = draw(st.integers(1, 5))
    seq_names = draw(st.lists(st.text(NAME_ALPHABET, min_size=1, max_size=8), min_size=count,
                              max_size=count, unique=True))
    columns = draw(st.integers(1, 50))
    rows = []
    for _ in range(count):
        row = draw(st.text(PROTEIN_LETTERS + "-", min_size=columns, max_size=columns))
        if row.strip("-") == "":
            row = "A" + row[1:]
        rows.append(row)
    kind = draw(st.sampled_from(["sto", "a3m"]))
    expected = [(name, row.replace("-", "")) for name, row in zip(seq_names, rows)]
    if kind == "sto":
        width = draw(st.integers(1, 60))
        lines = ["# STOCKHOLM 1.0", "#=GF ID family"]
        for start in range(0, columns, width):
            lines.extend(f"{name} {row[start:start + width]}" for name, row in zip(seq_names, rows))
            lines.append("")
        lines.append("//")
        return kind, expected, "\n".join(lines) + "\n"
    lines = ["#A3M"] if draw(st.booleans()) else []
    expected = []
    for name, row in zip(seq_names, rows):
        insert = draw(st.text(PROTEIN_LETTERS.lower(), max_size=3))  # A3M insertions: lower case
        lines += [f">{name}", insert + row]
        expected.append((name, (insert + row).upper().replace("-", "")))
    return kind, expected, "\n".join(lines) + "\n"


VALID_SMILES = ["CCO", "c1ccccc1", "CC(=O)O", "C1CCCCC1", "c1ccncc1", "CC(C)Cc1ccc(C)cc1",
                "O=C(O)c1ccccc1O", "C[C@H](N)C(=O)O", "[Na+].[Cl-]", "C#N", "c1ccc2ccccc2c1",
                "CCN(CC)CC", "OC1CCNCC1", "Brc1ccccc1", "FC(F)(F)c1ccccc1", "C1=CC=CN1", "N#Cc1ccccc1"]


@st.composite
def smiles_csv(draw):
    """(text, header) of a molecule CSV: valid and mutated SMILES, domains, header variants."""
    header = draw(st.sampled_from([["smiles", "domain"], ["SMILES"], ["domain", "smiles"],
                                   ["id", "smiles", "domain"], []]))
    rows = []
    for index in range(draw(st.integers(1, 8))):
        smiles = draw(st.sampled_from(VALID_SMILES))
        if draw(st.integers(0, 4)) == 0:
            smiles = draw(mutated(smiles))
        values = {"smiles": smiles, "domain": draw(st.sampled_from(["d1", "d2", "d3"])), "id": str(index)}
        rows.append(values)
    if not header:  # plain SMILES list (.smi): one per line, optional name after a space
        return "\n".join(r["smiles"] + (" name" if draw(st.booleans()) else "") for r in rows) + "\n"
    out = [",".join(header)]
    for values in rows:
        cells = [values[h.lower()] for h in header]
        out.append(",".join(f'"{c}"' if ("," in c or '"' in c) and draw(st.booleans()) else c
                            for c in cells))
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- checks
def check_user_error(err: Exception, inputs, out: Path | None) -> None:
    """The one acceptable failure: a user-facing project error, one line, naming an input,
    and nothing left at `out`."""
    message = str(err)
    event(f"refused: {type(err).__name__}")
    assert isinstance(err, DataPipelineError) and err.user_facing, repr(err)
    assert "\n" not in message and "\r" not in message, message
    assert any(str(path) in message for path in inputs), message
    if out is not None:
        assert not out.exists(), f"{out} left behind after: {message}"


def stored_sequences(build: Path):
    """Every sequence stored in a finished build, read back through the shard reader."""
    event("built")
    manifest = read_manifest(build)
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            reader = ShardReader(build / shard["name"], expected_samples=shard["samples"])
            for index in range(len(reader)):
                yield from reader.read_sequences(index)
            reader.close()
