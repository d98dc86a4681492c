"""`bioxlstm eval` on an export directory: the report files, overwrite protection, and one clear
line for each bad input."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_protein_icl import write_families  # noqa: E402
from tiny import tiny_bioxlstm  # noqa: E402

from launchers.main import main as bioxlstm  # noqa: E402


def write_export(model, folder: Path, tokenizer: dict | None = None) -> Path:
    """An export directory as `bioxlstm export` writes it (weights, config, tokenizer)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({k: v.to(torch.float32).contiguous() for k, v in model.model.state_dict().items()},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(model.config.to_dict()))
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer or model.tokenizer.to_dict()))
    return folder


@pytest.fixture(scope="module")
def protein_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_families(root / "fams", [4, 3, 5])
    return write_export(tiny_bioxlstm("protein", seed=2), root / "export"), root / "fams"


def test_eval_writes_json_markdown_and_plots_and_keeps_an_existing_report(protein_export, tmp_path, capsys):
    export, families = protein_export
    out = tmp_path / "out"
    args = ["eval", str(export), "protein-icl", "--data", str(families), "--out", str(out), "--quick",
            "--context-len", "200"]
    assert bioxlstm(args) == 0
    report = json.loads((out / "eval.json").read_text())
    figure = report["suites"]["protein-icl"]["figures"]["first_perplexity"]
    assert figure["n"] == 3 and figure["value"] > 1 and figure["interval95"] > 0
    assert report["seed"] == 42 and report["data"] == str(families) and report["versions"]["torch"]
    assert report["figures"]["protein-icl/first_perplexity"] == figure["value"]
    text = (out / "eval.md").read_text()
    assert "| first_perplexity |" in text and "ICL curve" in text
    assert (out / "protein_icl_curve.png").stat().st_size > 1000
    assert f"plot: {out / 'protein_icl_curve.png'}" in capsys.readouterr().out

    before = (out / "eval.json").read_bytes()
    assert bioxlstm(args) == 2
    assert "already holds an evaluation" in capsys.readouterr().err
    assert (out / "eval.json").read_bytes() == before
    assert bioxlstm(args + ["--overwrite", "--seed", "1"]) == 0
    assert json.loads((out / "eval.json").read_text())["seed"] == 1


def test_without_matplotlib_the_numbers_come_with_a_note_and_no_plot(protein_export, tmp_path, monkeypatch):
    import evaluation.plots

    monkeypatch.setattr(evaluation.plots, "matplotlib_available", lambda: False)
    export, families = protein_export
    assert bioxlstm(["eval", str(export), "protein-icl", "--data", str(families), "--out", str(tmp_path / "o"),
                     "--quick", "--context-len", "200"]) == 0
    report = json.loads((tmp_path / "o" / "eval.json").read_text())
    assert any("matplotlib is not installed" in n for n in report["suites"]["protein-icl"]["notes"])
    assert not list((tmp_path / "o").glob("*.png"))


@pytest.mark.parametrize("case", ["unknown suite", "empty data file", "foreign tokenizer", "wrong modality",
                                  "bad option"])
def test_bad_input_is_one_clear_line(case, protein_export, tmp_path, capsys):
    export, families = protein_export
    suite, data = "protein-icl", str(families)
    extra = []
    expected = {"unknown suite": "unknown suite 'protein-icm'; known suites: protein-icl",
                "empty data file": "no FASTA records",
                "foreign tokenizer": "does not belong to this model",
                "wrong modality": "needs a molecules model; this one is a protein model",
                "bad option": "write NAME=VALUE"}[case]
    if case == "unknown suite":
        suite = "protein-icm"
    elif case == "empty data file":
        (tmp_path / "empty.fasta").write_text("")
        data = str(tmp_path / "empty.fasta")
    elif case == "foreign tokenizer":
        from tiny import tokenizer as make_tokenizer

        corpus = [f"C{'C' * n}[{atom}]" for n, atom in enumerate(["Na+", "K+", "Li+", "Mg+2", "Ca+2", "Zn+2"] * 8)]
        big = make_tokenizer("molecules", corpus=corpus + [f"[{e}H{n}]" for e in "CNOPS" for n in range(1, 6)])
        export = write_export(tiny_bioxlstm("protein", seed=2), tmp_path / "foreign", big.to_dict())
    elif case == "wrong modality":
        suite = "chem-domains"
    elif case == "bad option":
        extra = ["--option", "num_samples"]
    code = bioxlstm(["eval", str(export), suite, "--data", data, "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_an_option_scoped_to_one_suite_wins_over_the_shared_one():
    from evaluation.base import EvalRequest
    from evaluation.protein_generation import ProteinGenerationSuite
    from evaluation.protein_icl import ProteinICLSuite

    request = EvalRequest(quick=True, options={"max_families": 5, "protein-icl": {"max_families": 2}})
    assert ProteinICLSuite(request).option("max_families", 16, None) == 2
    assert ProteinGenerationSuite(request).option("max_families", 4, None) == 5
    assert ProteinGenerationSuite(EvalRequest(quick=False)).option("max_families", 4, None) is None


def test_a_unit_failing_on_one_rank_fails_every_rank_after_the_gather(tmp_path):
    """Two ranks simulated with a gather that hands each rank both payloads: the rank whose unit
    raised re-raises its own error, the other raises an EvaluationError naming it; neither is
    left waiting (the gather is reached on both)."""
    from evaluation.base import EvalRequest
    from evaluation.errors import EvaluationError
    from evaluation.protein_icl import ProteinICLSuite
    from evaluation.runner import run_suites

    write_families(tmp_path / "fams", [3, 3, 3, 3])
    model = tiny_bioxlstm("protein")

    class Broken(ProteinICLSuite):
        def run_unit(self, model, unit):
            if unit.index == 1:
                raise RuntimeError("unit 1 broke")
            return super().run_unit(model, unit)

    payloads = {}
    for rank in (0, 1):       # rank 0 runs units 0, 2; rank 1 runs units 1, 3
        def gather(payload, rank=rank):
            payloads[rank] = payload
            return [payloads.get(0, payload), payloads.get(1, payload)]
        suite = Broken(EvalRequest(data=str(tmp_path / "fams"), context_len=64))
        if rank == 0:
            payloads[1] = {"results": {}, "failure": "protein-icl on rank 1: RuntimeError: unit 1 broke",
                           "seconds": 0.0}
            with pytest.raises(EvaluationError, match="rank 1: RuntimeError: unit 1 broke"):
                run_suites(model, [suite], rank=0, world_size=2, gather=gather)
            assert sorted(payloads[0]["results"]) == [0, 2]
        else:
            with pytest.raises(RuntimeError, match="unit 1 broke"):
                run_suites(model, [suite], rank=1, world_size=2, gather=gather)
            assert payloads[1]["failure"].endswith("RuntimeError: unit 1 broke")
