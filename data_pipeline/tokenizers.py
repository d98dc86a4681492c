"""Tokenizers for DNA, protein and SMILES, saved and loaded as JSON.

Only the standard library is imported at module top, so an exported model can load its
tokenizer without webdataset, RDKit or torch. Vocabularies follow DESIGN.md section 8
(DNA-xLSTM, Prot-xLSTM and Chem-xLSTM public code).

`encode` maps a plain sequence (no special tokens) to ids; formatters add the special
tokens. `decode` renders special tokens by name. Characters with no id raise
`UnknownSymbolError` unless `unknown="replace"` maps them to the modality's wildcard.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Sequence

from data_pipeline.errors import ConfigError, UnknownSymbolError

UNKNOWN_POLICIES = ("error", "replace")


def _check_policy(unknown: str) -> None:
    if unknown not in UNKNOWN_POLICIES:
        raise ConfigError(f"unknown={unknown!r}: choose one of {', '.join(UNKNOWN_POLICIES)}")


class _VocabTokenizer:
    """Shared bookkeeping: a list of token strings whose index is the id."""

    kind = ""
    vocab: list[str]

    def __init__(self, unknown: str = "error"):
        _check_policy(unknown)
        self.unknown = unknown
        self.token_to_id = {token: index for index, token in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def num_used_ids(self) -> int:
        """How many ids (0..n-1) encoding and the formatters can produce: the least embedding
        size of a model trained on this tokenizer's data."""
        return len(self.vocab)

    def token_id(self, token: str) -> int:
        return self.token_to_id[token]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.vocab[int(i)] for i in ids)

    def to_dict(self) -> dict:
        return {"type": self.kind, "vocab": list(self.vocab), "unknown": self.unknown}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    def unknown_error(self, symbol: str, position: int, where: str | None) -> UnknownSymbolError:
        place = f" in {where}" if where else ""
        return UnknownSymbolError(
            f"unknown {self.kind} symbol {symbol!r} at position {position}{place}: fix the input "
            f"or rebuild with --unknown=replace (maps it to {self.wildcard!r})"
        )

    wildcard = ""


class _CharTokenizer(_VocabTokenizer):
    """One character = one token, via a str.translate table (fast, pure Python)."""

    def __init__(self, unknown: str = "error"):
        super().__init__(unknown)
        table = {}
        for char, index in self.char_ids().items():
            table[ord(char)] = chr(index)
        self._table = table
        # Checked on the input, not on the translated ids: a control or punctuation character
        # whose code point happens to be < vocab_size must not pass as a special-token id.
        self._unknown = re.compile(f"[^{re.escape(''.join(sorted(self.char_ids())))}]")
        self._normal = {ord(char): self.vocab[index] for char, index in self.char_ids().items()}
        self._drop_known = {ord(char): None for char in self.char_ids()}
        byte_normal = bytearray(b"\xff" * 256)  # 0xff: no token (never a token of an ASCII vocabulary)
        for char, index in self.char_ids().items():
            if len(char) == 1 and char.isascii() and len(self.vocab[index]) == 1 and self.vocab[index].isascii():
                byte_normal[ord(char)] = ord(self.vocab[index])
        self._byte_normal = bytes(byte_normal) if all(len(c) == 1 for c in self.char_ids()) else None

    def char_ids(self) -> dict[str, int]:
        raise NotImplementedError

    def normalize(self, sequence: str, unknown: str | None = None, where: str | None = None) -> str:
        """`decode(encode_bytes(sequence))` in one str.translate: upper case, codes mapped to their
        token (IUPAC -> N), unknown symbols refused or replaced; what builders store."""
        policy = unknown or self.unknown
        _check_policy(policy)
        bad = self.first_unknown(sequence)
        if bad is not None:
            if policy == "error":
                raise self.unknown_error(bad[1], bad[0], where)
            sequence = self._unknown.sub(self.wildcard, sequence)
        return sequence.translate(self._normal)

    def normalize_bytes(self, data: bytes, unknown: str | None = None, where: str | None = None) -> str:
        """`normalize` of ASCII bytes through one bytes.translate (~2x faster than the str path);
        input with anything to refuse or replace takes `normalize` itself, so both agree."""
        if self._byte_normal is not None and data.isascii():
            out = data.translate(self._byte_normal)
            if out.find(b"\xff") < 0:
                return out.decode("ascii")
        return self.normalize(data.decode("utf-8"), unknown, where)

    def first_unknown(self, sequence: str) -> tuple[int, str] | None:
        """(position, symbol) of the first symbol without a token, or None."""
        # deleting the known symbols (one C pass) is much faster than the regex on clean input
        if not sequence.translate(self._drop_known):
            return None
        bad = self._unknown.search(sequence)
        return (bad.start(), bad.group()) if bad is not None else None

    def encode_bytes(self, sequence: str, unknown: str | None = None, where: str | None = None) -> bytes:
        """Ids as one byte each (all char vocabularies are < 256): the fast path for builders."""
        policy = unknown or self.unknown
        _check_policy(policy)
        bad = self._unknown.search(sequence)
        if bad is not None:
            if policy == "error":
                raise self.unknown_error(sequence[bad.start()], bad.start(), where)
            sequence = self._unknown.sub(self.wildcard, sequence)
        return sequence.translate(self._table).encode("latin-1")

    def encode(self, sequence: str, unknown: str | None = None, where: str | None = None) -> list[int]:
        return list(self.encode_bytes(sequence, unknown, where))


class DNATokenizer(_CharTokenizer):
    """Single-nucleotide tokens; lowercase (soft-masked) accepted; IUPAC ambiguity codes -> N."""

    kind = "dna"
    vocab = ["[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]",
             "A", "C", "G", "T", "N", "[UNUSED12]", "[UNUSED13]", "[UNUSED14]", "[UNUSED15]"]
    wildcard = "N"
    iupac_ambiguity = "RYSWKMBDHVU"  # U (RNA) is not ambiguous but has no DNA id either: -> N

    def char_ids(self) -> dict[str, int]:
        ids = {}
        for base in "ACGTN":
            ids[base] = ids[base.lower()] = self.vocab.index(base)
        n_id = self.vocab.index("N")
        for code in self.iupac_ambiguity:
            ids[code] = ids[code.lower()] = n_id
        return ids

    @property
    def pad_id(self) -> int:
        return self.token_to_id["[PAD]"]

    @property
    def num_used_ids(self) -> int:
        """12: the [UNUSED*] ids only pad the vocabulary to 16 and are never produced, so a model
        with the official DNA-xLSTM's 12-id embedding trains on this data."""
        return self.token_to_id["N"] + 1

    @property
    def mask_id(self) -> int:
        return self.token_to_id["[MASK]"]

    @property
    def base_ids(self) -> list[int]:
        return [self.token_to_id[b] for b in "ACGT"]

    def complement_table(self) -> list[int]:
        """id -> id of the complementary base; special tokens and N map to themselves."""
        table = list(range(self.vocab_size))
        for a, b in ("AT", "TA", "CG", "GC"):
            table[self.token_to_id[a]] = self.token_to_id[b]
        return table

    def reverse_complement(self, ids: Sequence[int]) -> list[int]:
        table = self.complement_table()
        return [table[int(i)] for i in reversed(ids)]


class ProteinTokenizer(_CharTokenizer):
    """Prot-xLSTM's 38-id vocabulary (DESIGN.md section 8), FIM sentinels included."""

    kind = "protein"
    vocab = (["<cls>", "<pad>", "<eos>", "<unk>"] + list("LAGVSERTIDPKQNFYMHWC")
             + list("XBUZO") + [".", "-", "<null_1>", "<mask>"]
             + [f"<mask-{k}>" for k in range(1, 6)])
    wildcard = "X"

    def char_ids(self) -> dict[str, int]:
        ids = {}
        for char in "LAGVSERTIDPKQNFYMHWCXBUZO":
            ids[char] = ids[char.lower()] = self.vocab.index(char)
        ids["."] = self.vocab.index(".")
        ids["-"] = self.vocab.index("-")
        return ids

    @property
    def pad_id(self) -> int:
        return self.token_to_id["<pad>"]

    @property
    def cls_id(self) -> int:
        return self.token_to_id["<cls>"]

    @property
    def eos_id(self) -> int:
        return self.token_to_id["<eos>"]

    def fim_mask_id(self, span_number: int) -> int:
        """Sentinel `<mask-k>` for the k-th moved span, k = 1..5."""
        return self.token_to_id[f"<mask-{span_number}>"]


# Atom-level SMILES regex (Schwaller et al. 2019, used by Chem-xLSTM's tokenizer).
SMILES_REGEX = re.compile(
    r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|\/|:|~|@|\?|>|\*|\$|%[0-9]{2}|[0-9])"
)
# The segmentation of the official Chem-xLSTM code (chemxlstm/smiles_utils.py `segment_smiles`
# with its default segment_sq_brackets=True, what its data loader and sampler call): "[" and "]"
# are tokens of their own, element symbols inside brackets are split off (two-letter symbols of
# this list first; "Cs" only right inside brackets), then bonds, branches and ring digits. Its
# backslash alternative matches two backslashes, so a single "\" (a SMILES bond) is no token
# there: the official code drops it silently; this tokenizer refuses it instead.
CHEM_XLSTM_ELEMENTS = (
    "Si Xe Ba Rb Ra Sr Dy Li Kr Bi Mn He Am Pu Cm Pm Ne Th Ni Pr Fe Lu Pa Fm Tm Tb Er Be Al Gd "
    "Eu te As Pt Lr Sm Ca La Ti Te Ac Cf Rf Na Cu Au Nd Ag Se se Zn Mg Br Cl Pb Sb "
    "U V K C B H N O S P F I b c n o s p").split()
CHEM_XLSTM_REGEX = re.compile(
    r"(\[|\]|(?<=\[)Cs(?=\])|" + "|".join(CHEM_XLSTM_ELEMENTS)
    + r"|\(|\)|\.|=|#|-|\+|\\\\|\/|:|~|@|\?|>|\*|\$|\%\d{2}|\d)")
SMILES_SEGMENTATIONS = {"atoms": SMILES_REGEX, "chem_xlstm": CHEM_XLSTM_REGEX}
SMILES_SPECIALS = ["[PAD]", "[BEG]", "[END]", "[UNK]"]
SMILES_REQUIRED = ("[PAD]", "[BEG]", "[END]")      # [PAD] = 0; [UNK] is optional
# Tokens every vocabulary holds, so small builds still tokenize common organic SMILES.
SMILES_BASE_TOKENS = (list("BCNOSPFI") + ["Cl", "Br"] + list("bcnosp") + list("()[]=#-+\\/:.%*")
                      + [str(d) for d in range(10)])


def split_smiles(smiles: str, segmentation: str = "atoms") -> list[str]:
    """Regex pieces; raises ValueError if the pieces do not cover the string."""
    pieces = SMILES_SEGMENTATIONS[segmentation].findall(smiles)
    if "".join(pieces) != smiles:
        raise ValueError(smiles)
    return pieces


class SmilesTokenizer(_VocabTokenizer):
    """Regex SMILES tokens; the vocabulary grows from the build's training data.

    `segmentation`: "atoms" (bracket atoms are one token; this project's builds) or
    "chem_xlstm" (the official Chem-xLSTM segmentation, for its converted checkpoints).
    `from_vocab` keeps a given vocabulary in its exact order (the official one is [PAD] = 0,
    then tokens in order of appearance in the training data, no [UNK])."""

    kind = "molecules"
    wildcard = "[UNK]"

    def __init__(self, tokens: Iterable[str] = (), unknown: str = "error", segmentation: str = "atoms"):
        seen = list(SMILES_SPECIALS)
        for token in list(SMILES_BASE_TOKENS) + sorted(set(tokens)):
            if token not in seen:
                seen.append(token)
        self.vocab = seen
        self._set_segmentation(segmentation)
        super().__init__(unknown)

    def _set_segmentation(self, segmentation: str) -> None:
        if segmentation not in SMILES_SEGMENTATIONS:
            raise ConfigError(f"segmentation={segmentation!r}: choose one of {', '.join(SMILES_SEGMENTATIONS)}")
        self.segmentation = segmentation

    @classmethod
    def from_corpus(cls, smiles: Iterable[str], unknown: str = "error") -> "SmilesTokenizer":
        tokens: set[str] = set()
        for item in smiles:
            tokens.update(split_smiles(item))
        return cls(sorted(tokens), unknown)

    @classmethod
    def from_vocab(cls, vocab: Sequence[str], unknown: str = "error", segmentation: str = "atoms",
                   source: str = "vocab") -> "SmilesTokenizer":
        """A tokenizer whose ids are exactly the positions of `vocab`."""
        if not isinstance(vocab, (list, tuple)):
            raise ConfigError(f"{source}: field 'vocab' must be a list of token strings")
        vocab = list(vocab)
        if not all(isinstance(t, str) and t for t in vocab) or len(set(vocab)) != len(vocab):
            raise ConfigError(f"{source}: field 'vocab' must list distinct non-empty token strings")
        missing = [t for t in SMILES_REQUIRED if t not in vocab]
        if missing or vocab[0] != "[PAD]":
            raise ConfigError(f"{source}: a SMILES vocab needs [PAD] at id 0 and [BEG], [END] "
                              f"(missing {missing or ['[PAD] at 0']})")
        _check_policy(unknown)
        if unknown == "replace" and "[UNK]" not in vocab:
            raise ConfigError(f"{source}: unknown='replace' needs an [UNK] token in the vocab; use 'error'")
        tokenizer = cls.__new__(cls)
        tokenizer.vocab = vocab
        tokenizer._set_segmentation(segmentation)
        _VocabTokenizer.__init__(tokenizer, unknown)
        return tokenizer

    @property
    def pad_id(self) -> int:
        return self.token_to_id["[PAD]"]

    @property
    def beg_id(self) -> int:
        return self.token_to_id["[BEG]"]

    @property
    def end_id(self) -> int:
        return self.token_to_id["[END]"]

    @property
    def separator_id(self) -> int:
        """Molecules of one domain are joined with '.' (Chem-xLSTM), a plain SMILES token."""
        return self.token_to_id["."]

    @property
    def special_tokens(self) -> list[str]:
        """The named specials this vocabulary holds (never sequence content)."""
        return [t for t in SMILES_SPECIALS if t in self.token_to_id]

    def encode(self, sequence: str, unknown: str | None = None, where: str | None = None) -> list[int]:
        policy = unknown or self.unknown
        _check_policy(policy)
        if policy == "replace" and "[UNK]" not in self.token_to_id:
            raise ConfigError("unknown='replace': this vocabulary has no [UNK] token; use 'error'")
        try:
            pieces = split_smiles(sequence, self.segmentation)
        except ValueError:
            covered = 0
            for match in SMILES_SEGMENTATIONS[self.segmentation].finditer(sequence):
                if match.start() != covered:
                    break
                covered = match.end()
            raise self.unknown_error(sequence[covered], covered, where) from None
        ids = []
        for position, piece in enumerate(pieces):
            index = self.token_to_id.get(piece)
            if index is None:
                if policy == "error":
                    raise self.unknown_error(piece, position, where)
                index = self.token_to_id["[UNK]"]
            ids.append(index)
        return ids

    def to_dict(self) -> dict:
        spec = {"type": self.kind, "vocab": list(self.vocab), "unknown": self.unknown}
        if self.segmentation != "atoms":
            spec["segmentation"] = self.segmentation
        return spec


TOKENIZER_TYPES = {"dna": DNATokenizer, "protein": ProteinTokenizer, "molecules": SmilesTokenizer}


def tokenizer_for(modality: str, unknown: str = "error"):
    """Fresh tokenizer of a modality (SMILES: base vocabulary only)."""
    if modality not in TOKENIZER_TYPES:
        raise ConfigError(f"modality={modality!r}: choose one of {', '.join(TOKENIZER_TYPES)}")
    return TOKENIZER_TYPES[modality](unknown=unknown)


def load_tokenizer(path_or_dict):
    """Tokenizer from `to_dict()` output or a JSON file holding it (e.g. an export's tokenizer.json)."""
    if isinstance(path_or_dict, dict):
        spec = path_or_dict
        source = "tokenizer dict"
    else:
        source = str(path_or_dict)
        try:
            spec = json.loads(Path(path_or_dict).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"cannot read tokenizer {source}: {err}; pass a tokenizer.json "
                              "written by Tokenizer.save") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{source}: not a mapping with 'type' and 'vocab'; pass Tokenizer.to_dict() output")
    kind = spec.get("type")
    if not isinstance(kind, str) or kind not in TOKENIZER_TYPES:
        raise ConfigError(f"{source}: field 'type'={kind!r} is not one of {', '.join(TOKENIZER_TYPES)}")
    unknown = spec.get("unknown", "error")
    if kind == "molecules":
        # Keep the saved order exactly: ids must not move between save and load.
        return SmilesTokenizer.from_vocab(spec.get("vocab") or [], unknown,
                                          spec.get("segmentation", "atoms"), source)
    tokenizer = TOKENIZER_TYPES[kind](unknown=unknown)
    if spec.get("vocab") not in (None, tokenizer.vocab):
        raise ConfigError(f"{source}: vocab differs from the built-in {kind} vocabulary; "
                          "it was written by another version")
    return tokenizer
