"""What the commands (`spmix-train`, `spmix-build-data`, `spmix-predict`, `spmix-export`) share
around absl's `app.run`.

- `--help` lists the program's flags also when it runs as an installed console script: absl
  shows the flags of the module named by `sys.argv[0]`, which for a console script is the
  wrapper file, not the module that defined the flags.
- A `UserError` (the data package's errors and the trainer's: one hierarchy, defined in
  `input_pipeline.errors`) prints as one message (with its fix) and exits with status 1;
  `--verbosity=1` (or higher) keeps the traceback for debugging. Any other exception is a bug
  and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app

from input_pipeline.command_line import show_flags_in_help, verbose
from spmix_jax.errors import UserError

USER_ERROR_EXIT_CODE = 1


def report_user_error(error: UserError) -> None:
    """Prints `error` the way the commands do (one `error: ...` message on stderr)."""
    print(f"error: {error}", file=sys.stderr, flush=True)


def exit_on_user_error(main: Callable[[Sequence[str]], Any]) -> Callable[[Sequence[str]], Any]:
    """`main` with user errors turned into a message and exit status 1 (unless verbose)."""

    @functools.wraps(main)
    def wrapped(argv: Sequence[str]) -> Any:
        try:
            return main(argv)
        except UserError as error:
            if verbose():
                raise
            report_user_error(error)
            sys.exit(USER_ERROR_EXIT_CODE)

    return wrapped


def run(main: Callable[..., Any], module_name: str) -> None:
    """`app.run(main)` with the program's flags in `--help` and user errors as messages."""
    show_flags_in_help(module_name)
    app.run(exit_on_user_error(main), flags_parser=parse_flags)


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's flag parsing, with the config found by path or shipped name, and a missing
    config, a failing `get_config` or an unknown `--config.x.y` override as one message."""
    from spmix_jax import config_files

    try:
        argv = config_files.resolve_in_argv(argv)
    except UserError as error:
        report_user_error(error)
        sys.exit(USER_ERROR_EXIT_CODE)
    try:
        return app.parse_flags_with_usage(list(argv))
    except (AttributeError, KeyError) as error:  # raised by ml_collections for unknown fields
        from spmix_jax.config_checks import unknown_override

        print(f"error: {unknown_override(argv) or error}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT_CODE)
