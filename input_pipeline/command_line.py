"""What the programs of this project (`spmix-build-data`, `spmix-train`) share around absl.

- `--help` lists the program's flags also when it runs as an installed console script: absl
  shows the flags of the module named by `sys.argv[0]`, which for a console script is the
  wrapper file, not the module that defined the flags.
- `--verbosity=1` (or higher) asks for tracebacks: a user error is then raised, not printed as
  one message.
"""

from __future__ import annotations

import sys

from absl import flags


def show_flags_in_help(module_name: str) -> None:
    """Makes the flags defined in `module_name` the key flags of the running program, and its
    docstring (the usage: e.g. `spmix-predict --workdir=W PATH...`) the text `--help` starts
    with; absl reads both from `__main__`, a console script's wrapper."""
    values = flags.FLAGS
    for flag in values.get_flags_for_module(module_name):
        values.register_key_flag_for_module(sys.argv[0], flag)
    main = sys.modules.get("__main__")
    module = sys.modules.get(module_name)
    if main is not None and module is not None and not main.__doc__:
        main.__doc__ = module.__doc__


def verbose() -> bool:
    """True when the user asked for logs (`--verbosity=1` or more): then tracebacks are shown."""
    flag = flags.FLAGS["verbosity"]
    return bool(flag.present and flag.value is not None and flag.value >= 1)
