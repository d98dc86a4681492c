"""User-facing errors of the trainer: one clear line naming the file or field and the fix."""


class PretrainError(Exception):
    """Base of the trainer's user-facing errors (the CLI prints them as one line)."""

    user_facing = True


class ConfigError(PretrainError, ValueError):
    """A run config that cannot work: unknown key, wrong type, inconsistent curriculum."""


class CheckpointError(PretrainError):
    """A checkpoint that is missing, damaged, or belongs to an incompatible run."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint that could not be written (disk full, quota, I/O error); nothing was published."""


class NonFiniteStepsError(PretrainError):
    """Too many consecutive steps with a non-finite loss or gradient (train.max_bad_steps)."""


class ConversionError(PretrainError):
    """An official (paper) checkpoint that cannot be converted exactly, or a model that cannot be
    written in an official format; nothing was written."""
