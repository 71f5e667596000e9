"""Errors a user causes: bad input data, a missing dataset, a config that cannot work.

They live here, at the bottom of the import graph, so the data package depends on nothing of the
trainer; `spmix_jax.errors` re-exports them and adds its own subclasses, and the entry points
(`spmix_jax.cli`, `input_pipeline.build`) print any of them as one `error: ...` message with its
fix and exit non-zero. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input or environment, with a message that says how to fix it."""


class NotFoundError(UserError, FileNotFoundError):
    """Something the user named or needs (a dataset, a folder, a checkpoint) does not exist."""


class DataError(UserError):
    """Bad input data; the message names the file, the CSV line and what was expected."""
