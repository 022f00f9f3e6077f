"""The ``taskrt`` command line (docs/cli.md); ``main`` is the console script.

Modules, each importing only those below it (tests/test_cli_layout.py keeps the
graph acyclic):

- ``dispatch``: the table of commands (the explicit registry), the parser, ``main``
  and exit statuses;
- ``jobs`` (add, get, ls, cancel, retry, stats, cleanup), ``watch``, ``serve``,
  ``schedules``, ``files`` (validate, generate): the commands, by topic;
- ``progress``: one job's live progress bar and the sources of its events;
- ``support``: what the commands share: the CLI's errors and exit statuses, the
  one error formatter, finding the runtime, parsing and printing.
"""

from .dispatch import COMMANDS, Command, build_parser, main
from .support import CommandError, UsageError

__all__ = ["COMMANDS", "Command", "CommandError", "UsageError", "build_parser", "main"]
