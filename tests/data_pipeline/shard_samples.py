"""Test helper: the samples of a finished build, read straight from its tar members (not
through the loader), so build tests check what is on disk."""
import json
import tarfile
from pathlib import Path

import zstandard

from data_pipeline.manifest import read_manifest


def read_samples(build: Path) -> dict:
    """split -> [(meta, sequences)] in shard and member order."""
    decompress = zstandard.ZstdDecompressor().decompress
    result = {}
    for split, info in read_manifest(build)["splits"].items():
        rows = []
        for shard in info["shards"]:
            with tarfile.open(Path(build) / shard["name"]) as archive:
                members = {m.name: archive.extractfile(m).read() for m in archive}
            for name in sorted(n for n in members if n.endswith(".json.zst")):
                key = name[: -len(".json.zst")]
                rows.append((json.loads(decompress(members[name])),
                             decompress(members[key + ".txt.zst"]).decode().split("\n")))
        result[split] = rows
    return result
