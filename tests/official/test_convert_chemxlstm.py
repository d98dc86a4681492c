"""Chem-xLSTM checkpoints (DESIGN.md section 11): model.pt + init_arguments.json -> export -> the
official logits and the official token ids; back to byte-identical tensors; --num-heads."""
import json

import pytest
import torch

from launchers.main import main
from pretrain.errors import ConversionError
from pretrain.official.convert import convert_official, export_official
from tests.official import official_reference as ref
from tests.official.helpers import assert_byte_identical, converted_logits, rel_err

D, HEADS, BLOCKS = 48, 2, 2
INNER = ref.inner_dim(D, 2.0, 64, up=True)
# The official segmentation (segment_smiles, square brackets split off), written out by hand.
MOLECULES = {
    "CC(=O)N[C@@H](C)C(=O)O": "C C ( = O ) N [ C @ @ H ] ( C ) C ( = O ) O",
    "c1ccccc1Cl": "c 1 c c c c c 1 Cl",
    "[Na+].[Cl-]": "[ Na + ] . [ Cl - ]",
    "O=C(O)c1ccc(Br)cc1": "O = C ( O ) c 1 c c c ( Br ) c c 1",
}


def official_vocab():
    """[PAD] = 0, then the tokens in order of appearance in [BEG] tokens [END] (learn_label_encoding)."""
    token2label = {"[PAD]": 0}
    for tokens in MOLECULES.values():
        for token in ["[BEG]"] + tokens.split() + ["[END]"]:
            token2label.setdefault(token, len(token2label))
    return token2label


def write_official(root, seed=0, **overrides):
    root.mkdir(parents=True, exist_ok=True)
    token2label = official_vocab()
    vocab_size = len(token2label) + 3                     # embedding rows beyond the vocabulary
    g = torch.Generator().manual_seed(seed)
    blocks = [ref.mlstm_block_tensors(g, D, INNER, HEADS, 4, 4, bias=False) for _ in range(BLOCKS)]
    state = ref.model_tensors(g, vocab_size, D, blocks)
    torch.save({"model." + k: v.float() for k, v in state.items()}, root / "model.pt")
    arguments = {"mode": "smiles", "model_dim": D, "state_dim": 64, "n_layers": BLOCKS, "n_heads": 1,
                 "dropout": 0.25, "vocab_size": vocab_size, "sequence_length": 2048, "n_max_epochs": 10,
                 "learning_rate": 0.001, "batch_size": 64, "device": "cuda", "n_augmentations": 0,
                 "gpt_upj_factor": 4.0, "kwargs": {}, "warned_about_token": [], "token2label": token2label,
                 "label2token": {str(v): k for k, v in token2label.items()},
                 "model_class": "<class 'chemxlstm.model.xLSTMModel'>"}
    arguments.update(overrides)
    (root / "init_arguments.json").write_text(json.dumps(arguments))
    return root, {k: v.float().double() for k, v in state.items()}


def test_converted_chem_xlstm_gives_the_official_logits_and_token_ids(tmp_path):
    src, state = write_official(tmp_path / "official")
    out = convert_official("chemxlstm", src, tmp_path / "export", num_heads=HEADS)
    token2label = official_vocab()
    _, model = converted_logits(out, torch.zeros(1, 1, dtype=torch.long))
    for smiles, tokens in MOLECULES.items():
        assert model.tokenizer.encode(smiles) == [token2label[t] for t in tokens.split()]
    ids = torch.tensor([[token2label["[BEG]"]] + model.tokenizer.encode("CC(=O)N[C@@H](C)C(=O)O")])
    logits, _ = converted_logits(out, ids)
    spec = dict(kinds=["m"] * BLOCKS, heads=HEADS, rope=None)
    assert rel_err(logits, ref.forward(state, spec, ids)) <= 1e-10
    assert model.score(["c1ccccc1Cl"])[0].num_tokens == 9         # scoring works without an [UNK] token


def test_round_trip_writes_byte_identical_tensors_and_the_vocabulary(tmp_path):
    src, _ = write_official(tmp_path / "official", seed=1)
    out = convert_official("chemxlstm", src, tmp_path / "export", num_heads=HEADS)
    back = export_official(out, tmp_path / "back", "chemxlstm")
    assert_byte_identical(torch.load(back / "model.pt", weights_only=True),
                          torch.load(src / "model.pt", weights_only=True))
    arguments = json.loads((back / "init_arguments.json").read_text())
    assert arguments["token2label"] == official_vocab() and arguments["n_heads"] == HEADS
    assert arguments["model_class"] == "<class 'chemxlstm.model.xLSTMModel'>"


def test_num_heads_is_required_and_checked(tmp_path):
    src, _ = write_official(tmp_path / "official")
    with pytest.raises(ConversionError, match="stores n_heads as 1 .* pass --num-heads"):
        convert_official("chemxlstm", src, tmp_path / "export")
    with pytest.raises(ConversionError, match="the gates have 2 heads, not --num-heads 4; pass --num-heads 2"):
        convert_official("chemxlstm", src, tmp_path / "export", num_heads=4)
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("overrides,needle", [
    (dict(model_class="<class 'chemxlstm.model.sLSTMModel'>"), "model_class="),
    (dict(mode="fasta"), "mode='fasta'"),
    (dict(token2label={"[PAD]": 0, "[BEG]": 2, "[END]": 3}, label2token=None), "labels must be the integers"),
    (dict(vocab_size=5), "vocab_size=5 is smaller than its vocabulary"),
    (dict(label2token={"0": "[PAD]"}), "label2token is not the inverse"),
    (dict(extra_setting=1), r"\['extra_setting'\]"),
])
def test_bad_init_arguments_are_refused_by_name(tmp_path, overrides, needle):
    src, _ = write_official(tmp_path / "official", **overrides)
    with pytest.raises(ConversionError, match=needle):
        convert_official("chemxlstm", src, tmp_path / "export", num_heads=HEADS)


def test_model_with_bracket_atom_tokens_is_refused_for_the_official_code(tmp_path):
    from data_pipeline.tokenizers import SmilesTokenizer

    src, _ = write_official(tmp_path / "official")
    out = convert_official("chemxlstm", src, tmp_path / "export", num_heads=HEADS)
    atoms = SmilesTokenizer.from_corpus(["CC[C@@H](N)O"])
    atoms.save(out / "tokenizer.json")
    with pytest.raises(ConversionError, match=r"bracket atoms as single tokens \(\['\[C@@H\]'\]\)"):
        export_official(out, tmp_path / "back", "chemxlstm")
    assert not (tmp_path / "back").exists()


def test_cli_convert_and_export_format(tmp_path, capsys):
    src, _ = write_official(tmp_path / "official")
    assert main(["convert", "chemxlstm", str(src), str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--num-heads" in err and len(err.strip().splitlines()) == 1
    assert main(["convert", "chemxlstm", str(src), str(tmp_path / "e"), "--num-heads", str(HEADS)]) == 0
    assert main(["export", str(tmp_path / "e"), str(tmp_path / "o"), "--format", "chemxlstm"]) == 0
    assert (tmp_path / "o" / "model.pt").is_file() and (tmp_path / "o" / "init_arguments.json").is_file()
    assert main(["export", str(tmp_path / "e"), str(tmp_path / "o"), "--format", "chemxlstm"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["convert", "export"])
def test_help_explains_the_official_formats(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for needle in ("protxlstm", "dnaxlstm", "chemxlstm", "init_arguments.json", "model.backbone.",
                   "weights_only=True", "examples:"):
        assert needle in text
