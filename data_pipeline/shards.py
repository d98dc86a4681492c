"""WebDataset tar shards with zstd members: a deterministic writer and a random-access reader.

A sample with key K is two tar members, `K.txt.zst` (its sequences, one per line) and
`K.json.zst` (group name and counts), the WebDataset convention of one key per sample.
Bytes depend only on the samples: fixed mtime/uid/gid/mode, USTAR headers, fixed zstd level
with frame checksums. A shard is written under a hidden temporary name and renamed when
complete, so an interrupted build never leaves a shard that looks finished.

The reader indexes member offsets from the tar headers once, then seeks to samples in any
order; this is what lets the loader resume at an exact position without replaying data.
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import zstandard

from data_pipeline.errors import ShardCorruptError

ZSTD_LEVEL = 3  # zstd default: 4-8x faster than 9; shards ~7% (DNA) / ~1% (protein) larger (bench/RESULTS.md)
SEQUENCES_EXT = "txt.zst"
META_EXT = "json.zst"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


NUL = b"\0"
_HEADER_TAIL = b"ustar\x0000" + NUL * (64 + 16 + 155)  # magic, empty user/group names, no device, no prefix


def ustar_header(name: str, size: int) -> bytes:
    """The USTAR header `tarfile` writes for a regular file with mode 0644, uid/gid 0, mtime 0 and
    empty user/group names (byte-identical; tested), built directly: tarfile's TarInfo costs
    ~0.1 ms per member, which dominated writing shards of small samples."""
    encoded = name.encode("ascii")
    if len(encoded) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name}")
    head = (encoded + NUL * (100 - len(encoded)) + b"0000644\x00" + b"0000000\x00" * 2
            + b"%011o\x00" % size + b"00000000000\x00")
    tail = b"0" + NUL * 100 + _HEADER_TAIL
    checksum = sum(head) + sum(tail) + 8 * 32  # the checksum field counts as eight spaces
    header = head + b"%06o\x00 " % checksum + tail
    return header + NUL * (tarfile.BLOCKSIZE - len(header))


class ShardWriter:
    """Writes one shard atomically: use as a context manager; `close()` renames into place."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.temp_path = self.path.with_name(f".{self.path.name}.partial")
        self._file = open(self.temp_path, "wb")
        self._hash = hashlib.sha256()  # of the bytes as written: the manifest's sha256, without reading back
        self.sha256 = ""
        self._offset = 0
        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
        self.samples = 0
        self.closed = False

    def _add_member(self, name: str, payload: bytes) -> None:
        pad = -len(payload) % tarfile.BLOCKSIZE
        member = ustar_header(name, len(payload)) + payload + NUL * pad
        self._hash.update(member)
        self._file.write(member)
        self._offset += tarfile.BLOCKSIZE + len(payload) + pad

    def write(self, key: str, sequences: list[str] | bytes, meta: dict | bytes) -> None:
        """One sample; `sequences` and `meta` may come already compressed (the zstd frames a
        build's worker processes made with the same settings)."""
        if not isinstance(sequences, bytes):
            sequences = self._compressor.compress("\n".join(sequences).encode("ascii"))
        if not isinstance(meta, bytes):
            meta = self._compressor.compress(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
        self._add_member(f"{key}.{SEQUENCES_EXT}", sequences)
        self._add_member(f"{key}.{META_EXT}", meta)
        self.samples += 1

    def close(self) -> None:
        """Finish the archive, flush it to disk, then rename it to its final name."""
        try:
            end = self._offset + 2 * tarfile.BLOCKSIZE  # two zero blocks, then whole records, as tarfile does
            tail = NUL * (2 * tarfile.BLOCKSIZE + -end % tarfile.RECORDSIZE)
            self._hash.update(tail)
            self._file.write(tail)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.temp_path, self.path)
            self.sha256 = self._hash.hexdigest()
        except BaseException:
            self.abort()
            raise
        self.closed = True

    def abort(self) -> None:
        """Drop the temporary file; closing may fail again (a full disk), which changes nothing."""
        try:
            self._file.close()
        except OSError:
            pass
        self.temp_path.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass(frozen=True)
class SampleLocation:
    key: str
    offset: int
    size: int
    member: str


class ShardReader:
    """Random access to the samples of one shard by index.

    With `on_corrupt="skip"`, a truncated tail is tolerated: samples whose headers were read
    stay readable and `missing_samples` tells how many the manifest expected beyond them.
    """

    def __init__(self, path: str | Path, on_corrupt: str = "error", expected_samples: int | None = None):
        self.path = Path(path)
        self.on_corrupt = on_corrupt
        self.locations: list[SampleLocation | None] = []
        self.index_error: str | None = None
        self._handle = None
        self._decompressor = zstandard.ZstdDecompressor()
        self._build_index()
        self.missing_samples = 0
        if expected_samples is not None and len(self.locations) < expected_samples:
            self.missing_samples = expected_samples - len(self.locations)
            if on_corrupt == "error" and self.index_error is None:
                self._fail(None, f"truncated: has {len(self.locations)} samples, manifest says {expected_samples}")

    def _fail(self, member: str | None, problem: str):
        where = f"{self.path}" + (f" member {member}" if member else "")
        raise ShardCorruptError(f"{where}: {problem}; rebuild the shards with `bioxlstm data build` "
                                "or set data.on_corrupt=skip to skip and count bad samples")

    def _build_index(self) -> None:
        last_member = None
        try:
            with tarfile.open(self.path, mode="r:") as archive:
                file_size = self.path.stat().st_size
                for info in archive:
                    last_member = info.name
                    if not info.name.endswith("." + SEQUENCES_EXT):
                        continue
                    if info.offset_data + info.size > file_size:
                        raise tarfile.ReadError("member data runs past the end of the file")
                    key = info.name[: -len(SEQUENCES_EXT) - 1]
                    self.locations.append(SampleLocation(key, info.offset_data, info.size, info.name))
        except (tarfile.TarError, OSError, EOFError) as err:
            after = f" after member {last_member}" if last_member else ""
            self.index_error = f"truncated or corrupt tar{after} ({err})"
            if self.on_corrupt == "error":
                self._fail(None, self.index_error)

    def __len__(self) -> int:
        return len(self.locations)

    def read_sequences(self, index: int) -> list[str] | None:
        """The sequences of sample `index`; None (skip mode) if it cannot be decoded."""
        if index >= len(self.locations):
            if self.on_corrupt == "error":
                self._fail(None, f"sample {index} is missing ({self.index_error or 'short shard'})")
            return None
        location = self.locations[index]
        if self._handle is None:
            self._handle = open(self.path, "rb")
        self._handle.seek(location.offset)
        payload = self._handle.read(location.size)
        try:
            if len(payload) != location.size:
                raise zstandard.ZstdError("member is truncated")
            text = self._decode(payload).decode("ascii")
        except (zstandard.ZstdError, UnicodeDecodeError) as err:
            if self.on_corrupt == "error":
                self._fail(location.member, f"cannot decode zstd member ({err})")
            return None
        return text.split("\n")

    def _decode(self, payload: bytes) -> bytes:
        """One whole zstd frame, streamed: a one-shot decompress would allocate whatever size
        a damaged frame header claims (MemoryError); the frame checksum and the content size
        are still checked, and a frame that ends early or has trailing bytes is refused."""
        stream = self._decompressor.decompressobj()
        data = stream.decompress(payload)
        if not stream.eof or stream.unused_data:
            raise zstandard.ZstdError("incomplete zstd frame or bytes after its end")
        return data

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
