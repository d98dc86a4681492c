"""The build manifest: what a build wrote, how, and the checksums to trust it by.

`manifest.json` is written last and atomically, so a directory with a manifest holds a
complete build. Loaders read shards only through the manifest.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from data_pipeline.errors import ManifestError
from data_pipeline.shards import sha256_file

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "bioxlstm-shards"
MANIFEST_VERSION = 1
SPLITS = ("train", "validation")


def write_manifest(out_dir: str | Path, manifest: dict) -> Path:
    """Temp file, fsync, rename: a reader sees no manifest or a whole one, never a half."""
    path = Path(out_dir) / MANIFEST_NAME
    temp = path.with_name(f".{MANIFEST_NAME}.partial")
    try:
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def read_manifest(build_dir: str | Path) -> dict:
    """The manifest of a build directory, with its structure checked."""
    path = Path(build_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path} not found: {build_dir} is not a finished build; run "
                            "`bioxlstm data build <modality> INPUT... --out DIR` first")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: not valid JSON ({err}); rebuild the shards") from None
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != MANIFEST_VERSION:
        raise ManifestError(f"{path}: format/version is not {MANIFEST_FORMAT} v{MANIFEST_VERSION}; "
                            "rebuild with this version of bioxlstm")
    for field in ("modality", "tokenizer", "splits"):
        if field not in manifest:
            raise ManifestError(f"{path}: field {field!r} missing; rebuild the shards")
    return manifest


def verify_shard(build_dir: str | Path, shard: dict) -> None:
    """Raise ManifestError if a shard is missing or its sha256 differs from the manifest."""
    path = Path(build_dir) / shard["name"]
    if not path.is_file():
        raise ManifestError(f"{path}: listed in {MANIFEST_NAME} but missing; restore it or rebuild")
    actual = sha256_file(path)
    if actual != shard["sha256"]:
        raise ManifestError(f"{path}: sha256 {actual[:12]}... does not match {MANIFEST_NAME} "
                            f"({shard['sha256'][:12]}...); the shard changed or is corrupt: rebuild "
                            "or set data.on_corrupt=skip")
