"""eval.json (every figure with its n and interval, plus model, data, seed, versions), eval.md (a
table a person reads) and the suites' PNG plots, written into a staged folder that replaces the
output directory only when complete."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from data_pipeline.staged_output import staged_directory
from evaluation.base import Suite
from evaluation.errors import EvaluationError
from evaluation import plots as plotting

REPORT_JSON = "eval.json"
REPORT_MD = "eval.md"


def refuse_existing_report(out_dir: Path, overwrite: bool) -> None:
    """An earlier evaluation is replaced only with --overwrite (checked before any work)."""
    if (out_dir / REPORT_JSON).exists() and not overwrite:
        raise EvaluationError(f"{out_dir} already holds an evaluation ({REPORT_JSON}); choose another "
                              "--out or pass --overwrite to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise EvaluationError(f"{out_dir} exists and is not a directory; choose another --out")


def versions() -> dict:
    """Versions of what produced the numbers (the metrics depend on RDKit, ChemNet, HMMER)."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for package in ("torch", "numpy", "rdkit", "fcd-torch", "pyhmmer", "scipy", "biopython",
                    "bio-xlstm-pretrain"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def report_dict(results: list, meta: dict) -> dict:
    return {"format": "bioxlstm-eval", "version": 1,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **meta, "versions": versions(),
            "suites": {r.suite: r.to_dict() for r in results}}


def flat_figures(results: list) -> dict:
    """{"<suite>/<figure>": value} of every finite figure: what metrics.jsonl and TensorBoard
    (under eval/) get."""
    flat = {}
    for result in results:
        for name, figure in result.figures.items():
            if figure.value is not None:
                flat[f"{result.suite}/{name}"] = figure.value
    return flat


def markdown(results: list, meta: dict) -> str:
    lines = [f"# Evaluation of `{meta.get('model', '?')}`", ""]
    for key in ("data", "seed", "quick", "step"):
        if meta.get(key) is not None:
            lines.append(f"- {key}: `{meta[key]}`")
    lines.append("")
    for result in results:
        lines += [f"## {result.suite}", ""]
        if result.seconds is not None:
            lines += [f"{result.seconds:.1f} s; settings: `{json.dumps(result.settings, sort_keys=True)}`", ""]
        lines += ["| figure | value ± 95% interval (n) |", "|---|---|"]
        lines += [f"| {name} | {figure.text()} |" for name, figure in result.figures.items()]
        lines.append("")
        for table in result.tables:
            lines += [f"**{table.title}**", "", "| " + " | ".join(map(str, table.columns)) + " |",
                      "|" + "---|" * len(table.columns)]
            lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
            lines.append("")
        for plot in result.plots:
            lines += [f"![{Path(plot).stem}]({Path(plot).name})", ""]
        lines += [f"> {note}" for note in result.notes]
        lines.append("")
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def write_report(results: list, suites: list, out_dir: Path, meta: dict, overwrite: bool = False) -> Path:
    """Write eval.json, eval.md and the plots into `out_dir` (replaced whole, atomically)."""
    out_dir = Path(out_dir)
    refuse_existing_report(out_dir, overwrite)
    with staged_directory(out_dir) as staging:
        for suite, result in zip(suites, results):
            plots = suite.plot(result, staging)
            result.plots = [out_dir / Path(p).name for p in plots]
            if not plots and not plotting.matplotlib_available() and type(suite).plot is not Suite.plot:
                result.notes.append("matplotlib is not installed: no plot written (pip install matplotlib)")
        (staging / REPORT_JSON).write_text(json.dumps(report_dict(results, meta), indent=1, default=str) + "\n")
        (staging / REPORT_MD).write_text(markdown(results, meta))
    return out_dir
