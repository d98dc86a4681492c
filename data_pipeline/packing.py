"""Rows of real tokens: whole documents packed one after another (DESIGN.md section 9).

A row of `context_len` positions takes documents in stream order until it is full; the last
one may be cut at the row's end (its tail is dropped, not carried into the next row, so a cut
is decided by the row alone and a resumed stream cuts identically). Every document's first
position is a document start, and so is the first padding position of a row that ends early
(an epoch's last row): the model resets its recurrent state there, so no document sees another
one, or padding, in either direction.
"""
from __future__ import annotations

from data_pipeline.formatters import IGNORE, Document


class RowBuilder:
    """Accumulates documents into one row; `finish()` pads it and returns the row."""

    def __init__(self, context_len: int, pad_id: int):
        self.context_len, self.pad_id = context_len, pad_id
        self.inputs: list[int] = []
        self.labels: list[int] = []
        self.positions: list[int] = []
        self.starts: list[bool] = []
        self.keys: list[str] = []

    @property
    def room(self) -> int:
        return self.context_len - len(self.inputs)

    @property
    def empty(self) -> bool:
        return not self.inputs

    def add(self, document: Document, key: str) -> None:
        """Append `document`, cut to the room left (a document of length 0 adds nothing)."""
        take = min(len(document.inputs), self.room)
        if take == 0:
            return
        self.inputs += document.inputs[:take]
        self.labels += document.labels[:take]
        self.positions += document.positions[:take]
        self.starts += [True] + [False] * (take - 1)
        self.keys.append(key)

    def finish(self) -> tuple[Document, list[bool], str | None]:
        """(padded row, document_starts, key: the row's document keys joined with '+', or None
        for a row without any document)."""
        pad = self.room
        row = Document(self.inputs + [self.pad_id] * pad, self.labels + [IGNORE] * pad,
                       self.positions + [0] * pad)
        starts = self.starts + [True] + [False] * (pad - 1) if pad else list(self.starts)
        return row, starts, "+".join(self.keys) if self.keys else None


def single_document_row(document: Document | None, key: str | None, context_len: int,
                        pad_id: int) -> tuple[Document, list[bool], str | None]:
    """The unpacked row: one document (or none) padded to the context length."""
    row = RowBuilder(context_len, pad_id)
    if document is not None:
        row.add(document, key)
    packed, starts, _ = row.finish()
    return packed, starts, key if document is not None else None
