"""Errors a user can fix before (or instead of) waiting in a SLURM queue.

Each names the option, file or environment variable at fault and says what to do. The
`bioxlstm` entry point prints exceptions with `user_facing = True` as one line.
"""
from __future__ import annotations


class LaunchError(Exception):
    """Base class for every launch problem the user can act on."""

    user_facing = True


class LaunchOptionError(LaunchError):
    """A launch option is missing, malformed or inconsistent with another option."""


class ParallelLayoutError(LaunchError):
    """nodes x GPUs per node does not split into whole context-parallel groups."""


class OutputDirError(LaunchError):
    """The run or log directory cannot be written, or holds a run with a different config."""


class HostlistError(LaunchError):
    """SLURM_JOB_NODELIST (or another SLURM variable) cannot be interpreted."""


class SoftwareEnvironmentError(LaunchError):
    """The installed versions form a combination known not to work (pretrain.environment)."""


class SlurmEnvironmentError(LaunchError):
    """A task was started outside SLURM or without the variables a distributed run needs."""

