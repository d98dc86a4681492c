"""A directory written whole or not at all: build it in a temporary sibling, then rename it into
place (an old one is removed only afterwards). Exports and evaluation reports use it, so a
failed or interrupted write leaves the previous result untouched."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def staged_directory(out_dir: Path):
    """Yield a temporary sibling of `out_dir` to write into; on success it replaces `out_dir`
    (an old one is removed only afterwards), on any failure it is removed and `out_dir` is
    untouched."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield staging
        replace_directory(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_directory(staging: Path, out_dir: Path) -> None:
    """Rename a finished directory over `out_dir`; an old one is removed only afterwards."""
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.rmdir(old)
    os.rename(out_dir, old)
    try:
        os.rename(staging, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
