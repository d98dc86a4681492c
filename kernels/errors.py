"""User-facing errors of the kernels package.

Each class carries `user_facing = True` so the CLI prints it as one line instead of a traceback.
"""


class KernelError(Exception):
    """Base class of every error the kernels package raises on purpose."""

    user_facing = True


class KernelInputError(KernelError, ValueError):
    """A tensor or argument passed to an mLSTM kernel has the wrong shape, dtype or value."""


class UnknownBackendError(KernelError, ValueError):
    """An mLSTM backend name that is not registered (the message lists the known ones)."""


class BackendUnavailableError(KernelError, RuntimeError):
    """A registered backend cannot run here (e.g. Triton kernels missing or not importable)."""
