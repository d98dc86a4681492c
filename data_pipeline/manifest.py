"""The build manifest: what a build wrote, how, and the checksums to trust it by.

`manifest.json` is written last and atomically, so a directory with a manifest holds a
complete build. Loaders read shards only through the manifest.
"""
from __future__ import annotations

import json
import os
from array import array
from pathlib import Path

from data_pipeline.errors import ManifestError
from data_pipeline.shards import sha256_file

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "bioxlstm-shards"
MANIFEST_VERSION = 1
SPLITS = ("train", "validation")


def _as_list(value):
    """Arrays (a build's per-sample token counts) are written as JSON lists."""
    if isinstance(value, array):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def write_manifest(out_dir: str | Path, manifest: dict) -> Path:
    """Temp file, fsync, rename: a reader sees no manifest or a whole one, never a half."""
    path = Path(out_dir) / MANIFEST_NAME
    temp = path.with_name(f".{MANIFEST_NAME}.partial")
    try:
        with open(temp, "w", encoding="utf-8") as handle:
            # streamed: json.dumps with an indent first lists every piece of text (~50 bytes each,
            # two per sample's token count: ~20 MB for 200k samples)
            json.dump(manifest, handle, indent=1, sort_keys=True, default=_as_list)
            handle.write("\n")
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
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ManifestError(f"{path}: not valid JSON ({err}); rebuild the shards") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT \
            or manifest.get("version") != MANIFEST_VERSION:
        raise ManifestError(f"{path}: format/version is not {MANIFEST_FORMAT} v{MANIFEST_VERSION}; "
                            "rebuild with this version of bioxlstm")
    for field in ("modality", "tokenizer", "splits"):
        if field not in manifest:
            raise ManifestError(f"{path}: field {field!r} missing; rebuild the shards")
    problem = _structure_problem(manifest)
    if problem:
        raise ManifestError(f"{path}: {problem}; the file was edited or damaged: rebuild the shards")
    return manifest


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _structure_problem(manifest: dict) -> str | None:
    """What the loader relies on, checked once here so a damaged manifest is one clear error
    instead of a KeyError deep in the loader."""
    if not isinstance(manifest["modality"], str):
        return "field 'modality' is not a string"
    if not isinstance(manifest["tokenizer"], dict):
        return "field 'tokenizer' is not a mapping"
    splits = manifest["splits"]
    if not isinstance(splits, dict) or any(not isinstance(splits.get(s), dict) for s in SPLITS):
        return f"field 'splits' must map {' and '.join(SPLITS)} to their shards"
    for split in SPLITS:
        shards = splits[split].get("shards")
        if not isinstance(shards, list):
            return f"splits.{split}.shards is not a list"
        for index, shard in enumerate(shards):
            where = f"splits.{split}.shards.{index}"
            if not isinstance(shard, dict):
                return f"{where} is not a mapping"
            name = shard.get("name")
            if not isinstance(name, str) or not name or name != Path(name).name or name.startswith("."):
                return f"{where}.name={name!r} is not a file name inside the build folder"
            if not isinstance(shard.get("sha256"), str):
                return f"{where}.sha256 is missing or not a string"
            if not _is_count(shard.get("samples")):
                return f"{where}.samples={shard.get('samples')!r} is not a count"
            tokens = shard.get("sample_tokens")
            if not isinstance(tokens, list) or len(tokens) != shard["samples"] or not all(map(_is_count, tokens)):
                return f"{where}.sample_tokens must list one token count per sample ({shard['samples']})"
    return None


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
