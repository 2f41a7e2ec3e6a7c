"""The errors a user can fix. Each carries one line that names the file, field or flag and the problem.

Commands catch `UserError` (and nothing deeper) and print it as one `error:` line with a non-zero exit code
(`classsr_jax.cli.run`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


def one_line(text: object) -> str:
    """Collapses any message to one line (library errors often span several)."""
    return " ".join(str(text).split())


def reason(exc: BaseException, *, with_type: bool = False) -> str:
    """A one-line cause for a library exception: its message, or its type when it has none. `with_type` names
    the type first ("OSError: [Errno 28] No space left on device"), for libraries whose messages alone are vague
    (Orbax)."""
    text = one_line(exc)
    if with_type:
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text or type(exc).__name__


class UserError(ValueError):
    """A problem the user can fix, described in one line."""

    def __init__(self, message: object):
        super().__init__(one_line(message))


class CheckpointError(UserError):
    """A checkpoint that cannot be opened, written or does not fit the model."""


class DataError(UserError):
    """A dataset problem: a missing folder, an unreadable file, an empty split."""


class UnreadableImageError(DataError):
    """An image file in a dataset that cannot be decoded; `reason` is the short cause without the path."""

    def __init__(self, path: object, reason: str):
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = str(path)
        self.reason = reason


class ImageError(UserError):
    """An image file that cannot be read or written."""


class WriteError(UserError):
    """An output that cannot be written (no such folder, disk full, permission)."""


class ConfigError(UserError):
    """A config field with a wrong value, or a config that cannot be loaded."""


class TrainError(UserError):
    """A problem with the workdir or the inputs of a training stage, or a stage that diverged."""


class ConvertError(UserError):
    """A PyTorch checkpoint that cannot be converted."""
