"""Errors a user can fix: each names the file or field at fault and says what to do.

The `bioxlstm` entry point prints exceptions with `user_facing = True` as one line.
"""
from __future__ import annotations


class DataPipelineError(Exception):
    """Base class for every data problem the user can act on."""

    user_facing = True


class InputFormatError(DataPipelineError):
    """A raw input file (FASTA, A3M, Stockholm, cluster table, CSV) is malformed or empty."""


class UnknownSymbolError(DataPipelineError):
    """A sequence holds a character the tokenizer has no id for."""


class ShardCorruptError(DataPipelineError):
    """A shard is truncated, has a bad tar header or an undecodable zstd member."""


class ManifestError(DataPipelineError):
    """The build directory has no manifest, a bad one, or a shard that does not match it."""


class ConfigError(DataPipelineError):
    """A DataConfig field or loader argument has an invalid value."""


class OutputExistsError(DataPipelineError):
    """The build would overwrite an existing build; nothing is written."""


class BuildWriteError(DataPipelineError):
    """Writing the build failed (disk full, no permission); the files it wrote are removed."""


class WorkerDiedError(DataPipelineError):
    """A build's worker process ended without finishing its task (killed, out of memory)."""


class LoaderStateError(DataPipelineError):
    """A loader state_dict does not fit the loader it is loaded into."""
