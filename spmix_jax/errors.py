"""Errors a user causes (a missing dataset, a config that cannot work, no checkpoint, ...).

The entry points print a `UserError` as one message, with its fix where there is one, and exit
non-zero; its traceback is shown only with `--verbosity=1`. Everything else is a bug and keeps
its traceback. The classes are defined by the data package (`input_pipeline.errors`, which
imports nothing of the trainer) and shared here, so one `except UserError` catches the data
errors and the trainer's alike.
"""

from __future__ import annotations

from input_pipeline.errors import DataError, NotFoundError, UserError

__all__ = ["DataError", "NotFoundError", "UserError"]
