"""User-facing errors.

Every failure caused by the user's input (a file, a flag, an index) is raised as a
:class:`UserError`. The CLI prints it as one line and exits with code 2; anything else
is an internal error (exit 1).
"""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USER = 2


class UserError(Exception):
    """An error in what the user gave us, reported without a traceback.

    Parameters
    ----------
    message
        What is wrong, in one sentence.
    source
        The file or flag the problem is in; it prefixes the message.
    """

    def __init__(self, message: str, source: str | Path | None = None) -> None:
        self.message = message
        self.source = None if source is None else str(source)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.source}: {self.message}" if self.source else self.message


class Terminated(BaseException):
    """SIGTERM (scancel, preemption, a time limit): unwinds like Ctrl-C so that work in progress
    is saved for ``--resume`` and nothing partial reaches the final path."""
