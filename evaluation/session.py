"""One evaluation from start to report: load the model, resolve the suites, run, write.

`evaluate_export` serves `bioxlstm eval` and the demo; the trainer calls `run_suites` and
`write_report` itself with the weights it holds (pretrain/in_training_eval.py).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

from evaluation import QUICK_SUITES
from evaluation.base import EvalRequest
from evaluation.errors import EvaluationError
from evaluation.report import flat_figures, refuse_existing_report, write_report
from evaluation.runner import make_suites, run_suites
from modeling.inference import TRAINING_FILE



def resolve_suite_names(names, modality: str) -> list:
    """`auto` -> every suite of the modality; duplicates dropped, order kept."""
    resolved = []
    for name in names:
        for item in (QUICK_SUITES.get(modality, ()) if name == "auto" else (name,)):
            if item not in resolved:
                resolved.append(item)
    return resolved


def training_facts(model_dir: Path) -> dict:
    path = Path(model_dir) / TRAINING_FILE
    if not path.is_file():
        return {}
    try:
        facts = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise EvaluationError(f"{path}: unreadable ({error}); remove it or re-export the model") from None
    return facts if isinstance(facts, dict) else {}


def evaluate_export(model_dir, suite_names, request: EvalRequest, out_dir, device: str = "cpu",
                    overwrite: bool = False, log: Optional[Callable[[str], None]] = None) -> list:
    from modeling.inference import load

    out_dir = Path(out_dir)
    refuse_existing_report(out_dir, overwrite)
    model = load(model_dir, device=device)
    facts = training_facts(Path(model_dir))
    if not request.context_lens and facts.get("context_lens"):
        request.context_lens = tuple(int(c) for c in facts["context_lens"])
    if request.context_len is None and request.context_lens:
        request.context_len = max(request.context_lens)   # the longest context it was trained for
    names = resolve_suite_names(suite_names, model.modality)
    suites = make_suites(names, request)
    results = run_suites(model, suites, log=log)
    meta = {"model": str(model_dir), "data": request.data, "seed": request.seed, "quick": request.quick,
            "request": {k: v for k, v in vars(request).items()}, "training": facts,
            "figures": flat_figures(results)}
    write_report(results, suites, out_dir, meta, overwrite=overwrite)
    return results
