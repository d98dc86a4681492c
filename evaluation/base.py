"""What an evaluation suite is: data + metric + aggregation, split into independent work units.

A suite (one module per suite, registered in `evaluation/__init__.py`) turns an `EvalRequest`
into a list of `WorkUnit`s (a family, a domain, a chunk of samples), each with its own seed, so
the result of a unit never depends on which rank ran it or in what order. `run_unit` does the
heavy work for one unit and returns plain JSON data; `summarize` aggregates the units' results
(in unit order) into `Figure`s and tables. The CLI (`bioxlstm eval`) and in-training evaluation
drive the same three calls, which is why the two give the same figures for the same weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from evaluation.errors import EvaluationError


@dataclass
class EvalRequest:
    """What the user asked for, shared by every suite of one evaluation."""

    data: Optional[str] = None              # shard directory (its validation split) or a data file / directory
    quick: bool = False                     # the small sizes (in-training, CI, the demo)
    seed: int = 42                          # the official evaluation seed (Prot-xLSTM shuffles with 42)
    context_len: Optional[int] = None       # longest context an item is laid out in; None = suite default
    context_lens: tuple = ()                # protein-icl: last-sequence perplexity at each of these
    novelty_reference: Optional[str] = None  # chem: SMILES file novelty is measured against
    train_data: Optional[str] = None        # chem: shard directory whose train split is the novelty default
    options: dict = field(default_factory=dict)   # suite-specific sizes, e.g. {"num_samples": 1024}
    batch_size: int = 64                    # sequences per forward / samples per batched step

    def option(self, name: str, quick_default, full_default, suite: Optional[str] = None):
        """A suite size: the user's value if given (`options[suite][name]` for one suite, else
        `options[name]` for every suite that has the size), else the quick or the full default."""
        scoped = self.options.get(suite) if suite else None
        value = scoped.get(name) if isinstance(scoped, dict) else None
        if value is None:
            value = self.options.get(name)
        if value is None:
            return quick_default if self.quick else full_default
        return value


@dataclass
class WorkUnit:
    index: int                              # position in the plan: results are aggregated in this order
    key: str                                # family / domain / chunk name, for tables and errors
    payload: Any                            # picklable input of run_unit (sequences, SMILES, ...)
    seed: int


@dataclass
class Table:
    title: str
    columns: list
    rows: list                              # lists of cells (str or number)


@dataclass
class SuiteResult:
    suite: str
    figures: dict                           # name -> Figure (the headline numbers)
    tables: list = field(default_factory=list)      # Table, for eval.md
    per_item: list = field(default_factory=list)    # per family / domain / chunk: plain dicts
    settings: dict = field(default_factory=dict)    # the sizes and data actually used
    notes: list = field(default_factory=list)       # caveats a reader must see
    plots: list = field(default_factory=list)       # written PNG paths (filled by the report)
    seconds: Optional[float] = None

    def to_dict(self) -> dict:
        return {"suite": self.suite,
                "figures": {name: figure.to_dict() for name, figure in self.figures.items()},
                "tables": [{"title": t.title, "columns": t.columns, "rows": t.rows} for t in self.tables],
                "per_item": self.per_item, "settings": self.settings, "notes": self.notes,
                "plots": [str(p) for p in self.plots], "seconds": self.seconds}


class Suite:
    """Base class; subclasses set `name`, `modality`, `needs_causal` and the three methods."""

    name: ClassVar[str] = ""
    modality: ClassVar[str] = ""            # "protein" | "molecules" | "dna"
    needs_causal: ClassVar[bool] = True
    description: ClassVar[str] = ""

    def __init__(self, request: EvalRequest):
        self.request = request

    def check_model(self, model) -> None:
        """One clear line when the model cannot run this suite (before any work)."""
        used = model.tokenizer.num_used_ids
        if used > model.config.vocab_size:
            raise EvaluationError(f"the model's tokenizer produces {used} ids but its embedding has "
                                  f"vocab_size {model.config.vocab_size}: tokenizer.json does not belong to "
                                  "this model; export again with the run's tokenizer")
        if model.modality != self.modality:
            raise EvaluationError(f"suite {self.name} needs a {self.modality} model; this one is a "
                                  f"{model.modality} model")
        if self.needs_causal and not model.is_causal:
            raise EvaluationError(f"suite {self.name} needs a causal (CLM) model; this one is "
                                  "bidirectional or has an MLM head")

    def option(self, name: str, quick_default, full_default):
        """This suite's size `name` (EvalRequest.option, scoped to the suite)."""
        return self.request.option(name, quick_default, full_default, self.name)

    def plan(self, model) -> list:
        raise NotImplementedError

    def run_unit(self, model, unit: WorkUnit) -> dict:
        raise NotImplementedError

    def summarize(self, model, results: list) -> SuiteResult:
        raise NotImplementedError

    def plot(self, result: SuiteResult, out_dir: Path) -> list:
        """PNG files for this result (matplotlib via evaluation.plots); none by default."""
        return []
