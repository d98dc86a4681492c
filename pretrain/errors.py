"""User-facing errors of the trainer: one clear line naming the file or field and the fix."""


class PretrainError(Exception):
    """Base of the trainer's user-facing errors (the CLI prints them as one line)."""

    user_facing = True


class ConfigError(PretrainError, ValueError):
    """A run config that cannot work: unknown key, wrong type, inconsistent curriculum."""


class CheckpointError(PretrainError):
    """A checkpoint that is missing, damaged, or belongs to an incompatible run."""
