"""Errors of the evaluation layer that a user fixes (bad data, a model that does not fit)."""
from __future__ import annotations


class EvaluationError(Exception):
    """A bad evaluation input or request; printed as one line by the CLI."""

    user_facing = True
