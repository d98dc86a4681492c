"""Run suites on one model, alone or shared by the ranks of a training job.

Units go round-robin to the ranks (`units[rank::world_size]`); each rank runs its own with the
unit's seed, the results are gathered and every suite is summarized from all of them in plan
order, so any number of ranks gives the figures one process gives. A unit that fails on one rank
(any exception, in planning or in a unit) is reported to every rank after the gather (no rank is
left waiting in a collective), and all of them raise: the failing rank its own error, the others
an EvaluationError naming it.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

from evaluation import get_suite
from evaluation.base import EvalRequest, SuiteResult
from evaluation.errors import EvaluationError

Gather = Callable[[object], list]      # this rank's object -> every rank's, in rank order


def make_suites(names, request: EvalRequest) -> list:
    return [get_suite(name)(request) for name in names]


def check_suites(suites: list, model) -> None:
    for suite in suites:
        suite.check_model(model)


def run_suites(model, suites: list, rank: int = 0, world_size: int = 1, gather: Optional[Gather] = None,
               log: Optional[Callable[[str], None]] = None) -> list:
    """SuiteResults of `suites` (from make_suites) on `model` (modeling.inference.BioXLSTM); on
    ranks other than 0 a list of None (they ran their share of the units)."""
    if world_size > 1 and gather is None:
        raise ValueError("world_size > 1 needs a gather function")
    check_suites(suites, model)
    results = []
    for suite in suites:
        started = time.perf_counter()
        mine, error, units = {}, None, []
        try:
            units = suite.plan(model)
            share = units[rank::world_size]
            for number, unit in enumerate(share, start=1):
                mine[unit.index] = suite.run_unit(model, unit)
                if log is not None:
                    log(f"{suite.name}: {unit.key} done ({number}/{len(share)}"
                        + (" on this rank)" if world_size > 1 else ")"))
        except Exception as caught:  # noqa: BLE001 - every rank must reach the gather, then all raise
            if world_size == 1:
                raise
            error = caught
        seconds = time.perf_counter() - started
        if world_size > 1:
            failure = f"{suite.name} on rank {rank}: {type(error).__name__}: {error}" if error else None
            shared = gather({"results": mine, "failure": failure, "seconds": seconds})
            failures = [part["failure"] for part in shared if part["failure"]]
            if error is not None:
                raise error
            if failures:
                raise EvaluationError(failures[0])
            mine = {index: value for part in shared for index, value in part["results"].items()}
            seconds = max(part["seconds"] for part in shared)
        if rank != 0:                # only rank 0 reports: the summary (ChemNet, KS, ...) runs once
            results.append(None)
            continue
        summary: SuiteResult = suite.summarize(model, [mine[unit.index] for unit in units])
        summary.seconds = round(seconds, 3)
        results.append(summary)
    return results
