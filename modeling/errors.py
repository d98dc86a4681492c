"""Errors a user of `modeling` can fix: a bad model config or an unsupported call."""


class ModelingError(Exception):
    """Base class of the model errors a user must fix."""

    user_facing = True


class ModelConfigError(ModelingError, ValueError):
    """A model config field is missing, unknown, of the wrong type or out of range."""

    user_facing = True


class StepModeError(ModelingError, RuntimeError):
    """Recurrent step mode was asked of a model that cannot run one token at a time."""

    user_facing = True


class ContextParallelError(ModelingError, RuntimeError):
    """A block or variant that cannot run with its sequence split across ranks."""

    user_facing = True


class ModelInputError(ModelingError, ValueError):
    """An input of the model's forward (e.g. document_starts) has the wrong type or shape."""

    user_facing = True
