"""Tokenizers: vocabularies of DESIGN.md section 8, round trips, reverse complement, JSON."""
import gzip
import json
import random
import subprocess
import sys

import pytest

from data_pipeline.demo import MOLECULES, PROTEINS
from data_pipeline.errors import UnknownSymbolError
from data_pipeline.tokenizers import (DNATokenizer, ProteinTokenizer, SmilesTokenizer,
                                      load_tokenizer, split_smiles)


def test_dna_vocab_matches_dna_xlstm():
    tok = DNATokenizer()
    assert tok.vocab[:12] == ["[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]",
                              "A", "C", "G", "T", "N"]
    assert tok.vocab_size == 16 and tok.pad_id == 4 and tok.mask_id == 3


def test_dna_round_trip_soft_masked_and_iupac():
    tok = DNATokenizer()
    rng = random.Random(1)
    seq = "".join(rng.choice("ACGTN") for _ in range(500))
    assert tok.decode(tok.encode(seq)) == seq
    assert tok.decode(tok.encode(seq.lower())) == seq
    assert tok.decode(tok.encode("ACRYkmGT")) == "ACNNNNGT"


def test_dna_reverse_complement_of_ids():
    tok = DNATokenizer()
    rng = random.Random(2)
    seq = "".join(rng.choice("ACGTN") for _ in range(300))
    expected = seq[::-1].translate(str.maketrans("ACGTN", "TGCAN"))
    assert tok.decode(tok.reverse_complement(tok.encode(seq))) == expected
    assert tok.reverse_complement(tok.reverse_complement(tok.encode(seq))) == tok.encode(seq)


def test_dna_unknown_symbol_error_and_replace():
    tok = DNATokenizer()
    with pytest.raises(UnknownSymbolError, match="'X' at position 2 in chr1"):
        tok.encode("ACXT", where="chr1")
    assert tok.decode(tok.encode("ACXT", unknown="replace")) == "ACNT"


def test_protein_vocab_is_prot_xlstm_38_ids():
    tok = ProteinTokenizer()
    assert tok.vocab_size == 38
    assert [tok.token_id(t) for t in ("<cls>", "<pad>", "<eos>", "<unk>")] == [0, 1, 2, 3]
    assert [tok.token_id(a) for a in "LAGVSERTIDPKQNFYMHWC"] == list(range(4, 24))
    assert [tok.token_id(a) for a in "XBUZO"] == list(range(24, 29))
    assert [tok.token_id(t) for t in (".", "-", "<null_1>", "<mask>")] == [29, 30, 31, 32]
    assert [tok.fim_mask_id(k) for k in range(1, 6)] == list(range(33, 38))


def test_protein_round_trip_on_real_uniprot():
    tok = ProteinTokenizer()
    with gzip.open(PROTEINS, "rt") as handle:
        seqs = [line.strip() for line, _ in zip((l for l in handle if not l.startswith(">")), range(200))]
    for seq in seqs:
        assert tok.decode(tok.encode(seq)) == seq
    with pytest.raises(UnknownSymbolError):
        tok.encode("MK*")
    assert tok.decode(tok.encode("MK*", unknown="replace")) == "MKX"


def test_smiles_regex_pieces():
    assert split_smiles("C[C@@H](Cl)c1ccc(Br)cc1%12") == ["C", "[C@@H]", "(", "Cl", ")", "c", "1", "c",
                                                            "c", "c", "(", "Br", ")", "c", "c", "1", "%12"]
    assert split_smiles("[nH]1cc[N+](=O)[O-]1") == ["[nH]", "1", "c", "c", "[N+]", "(", "=", "O", ")",
                                                    "[O-]", "1"]


def test_smiles_round_trip_on_real_moses_and_json(tmp_path):
    with gzip.open(MOLECULES, "rt") as handle:
        smiles = [handle.readline().strip() for _ in range(500)]
    tok = SmilesTokenizer.from_corpus(smiles)
    assert tok.vocab[:3] == ["[PAD]", "[BEG]", "[END]"]
    for item in smiles:
        assert tok.decode(tok.encode(item)) == item
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert again.vocab == tok.vocab and again.encode(smiles[0]) == tok.encode(smiles[0])
    assert tok.decode(tok.encode("C[Xe]C", unknown="replace")) == "C[UNK]C"


@pytest.mark.parametrize("tok", [DNATokenizer(), ProteinTokenizer()])
def test_save_load_round_trip(tok, tmp_path):
    tok.save(tmp_path / "t.json")
    loaded = load_tokenizer(json.loads((tmp_path / "t.json").read_text()))
    assert type(loaded) is type(tok) and loaded.vocab == tok.vocab


def test_tokenizers_import_only_stdlib():
    code = ("import sys, data_pipeline.tokenizers as t; "
            "bad = [m for m in ('webdataset', 'torch', 'rdkit', 'zstandard') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dna_tokenizer_produces_only_the_12_official_ids():
    tok = DNATokenizer()
    assert tok.vocab_size == 16 and tok.num_used_ids == 12          # [UNUSED12..15] only pad
    assert max(tok.encode("ACGTNacgtnRYKM")) == 11


def test_smiles_official_vocabulary_keeps_its_order_and_segmentation(tmp_path):
    from data_pipeline.errors import ConfigError
    from data_pipeline.tokenizers import SmilesTokenizer, load_tokenizer

    vocab = ["[PAD]", "[BEG]", "C", "[", "@", "H", "]", "N", "[END]", "O", "(", ")", "="]
    tok = SmilesTokenizer.from_vocab(vocab, segmentation="chem_xlstm")
    # square brackets are tokens of their own in the official Chem-xLSTM segmentation
    assert tok.encode("N[C@@H](C)C(=O)O") == [7, 3, 2, 4, 4, 5, 6, 10, 2, 11, 2, 10, 12, 9, 11, 9]
    tok.save(tmp_path / "t.json")
    again = load_tokenizer(tmp_path / "t.json")
    assert again.vocab == vocab and again.segmentation == "chem_xlstm" and again.special_tokens == ["[PAD]", "[BEG]", "[END]"]
    with pytest.raises(UnknownSymbolError, match="'\\\\\\\\'"):
        tok.encode("C\\C")                       # the official code silently drops a lone backslash
    with pytest.raises(ConfigError, match="no \\[UNK\\] token"):
        tok.encode("CS", unknown="replace")
    with pytest.raises(ConfigError, match="\\[PAD\\] at id 0"):
        SmilesTokenizer.from_vocab(["[BEG]", "[PAD]", "[END]"])
    assert "segmentation" not in SmilesTokenizer.from_corpus(["CCO"]).to_dict()   # former files unchanged


@pytest.mark.parametrize("tokenizer,alphabet", [(DNATokenizer, "ACGTNacgtnRYSWKMBDHVUryk"),
                                                (ProteinTokenizer, "ACDEFGHIKLMNPQRSTVWYXBZUOacdxy")])
def test_normalize_is_decode_of_encode_with_the_same_errors(tokenizer, alphabet):
    """The builders' one-pass normalize must equal decode(encode_bytes()) on fresh random input,
    and refuse (or replace) the first unknown symbol at the same position."""
    rng = random.Random()
    tok = tokenizer()
    for _ in range(20):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3000)))
        assert tok.normalize(text) == tok.decode(tok.encode_bytes(text))
        bad = text[:rng.randint(0, len(text))] + rng.choice("!# é") + text
        with pytest.raises(UnknownSymbolError) as ours:
            tok.normalize(bad, where="f.fa record 'x'")
        with pytest.raises(UnknownSymbolError) as reference:
            tok.encode_bytes(bad, where="f.fa record 'x'")
        assert str(ours.value) == str(reference.value)
        assert tok.normalize(bad, "replace") == tok.decode(tok.encode_bytes(bad, "replace"))
