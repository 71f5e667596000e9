"""Errors a user causes (a missing dataset, a config that cannot work, no checkpoint, ...).

The entry points print a `UserError` as one message, with its fix where there is one, and exit
non-zero; its traceback is shown only with `--verbosity=1`. Everything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input or environment, with a message that says how to fix it."""


class NotFoundError(UserError, FileNotFoundError):
    """Something the user named or needs (a dataset, a folder, a checkpoint) does not exist."""
