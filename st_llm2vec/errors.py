"""What a user can fix: the base class of every error st-llm2vec raises about its input, and the command line's
one way of reporting them.

Each error is also the built-in kind a caller would catch (a ``ValueError`` for a bad value, a
``FileNotFoundError`` for a missing file, ...), so ``except ValueError`` keeps working; the command line
tells them from bugs by :class:`UserError` alone: a user error is one line and exit status 2, anything
else keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user gave (a value, a file, a model, the environment); the message names the fix."""


class InputError(UserError, ValueError):
    """A value, config or model that cannot be used as given."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory the user named does not exist (or is not what it should be)."""


class OutputExistsError(UserError, FileExistsError):
    """The output exists and replacing it was not asked for."""


class MissingExtraError(UserError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


class NotPermittedError(UserError, PermissionError):
    """Credentials or permissions are missing (e.g. no Hugging Face token for a push)."""
