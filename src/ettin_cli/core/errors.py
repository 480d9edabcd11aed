"""The one exception type that reaches the user.

Anything the user can fix (a missing column, a bad path, a refused rerun) is raised as `EttinError` with a
one-line message that names the file, row or column at fault. The CLI prints it as `error: ...` and exits with
code 2, without a traceback. Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_USAGE = 2


class EttinError(Exception):
    """A user-facing error: one line, names what is wrong and where; exit code 2."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str) -> None:
        # Keep the message to one line whatever the caller passed: the CLI contract is a one-line error.
        super().__init__(" ".join(str(message).split()))
