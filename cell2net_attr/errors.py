"""User-facing errors.

Every failure caused by the user's input (a file, a flag, an index) is raised as a
:class:`UserError`. The CLI prints it as one line and exits with code 2; anything else
is an internal error (exit 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

EXIT_INTERNAL = 1
EXIT_USER = 2


class UserError(Exception):
    """An error in what the user gave us, reported without a traceback.

    Parameters
    ----------
    message
        What is wrong, in one sentence.
    source
        The file (or command-line argument) the problem is in; it prefixes the message.
    param
        The library parameter the problem is in (``n_steps``), when it is not a file; the command
        line names the flag that sets it instead (``--n-steps``).
    """

    def __init__(self, message: str, source: str | Path | None = None, *, param: str | None = None) -> None:
        self.message = message
        self.source = None if source is None else str(source)
        self.param = param
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = self.source or self.param
        return f"{where}: {self.message}" if where else self.message

    def describe(self, flags: Mapping[str, str] | None = None) -> str:
        """The message as the command line shows it: a parameter is named by its flag."""
        if self.source or not self.param:
            return str(self)
        flag = (flags or {}).get(self.param, "--" + self.param.replace("_", "-"))
        return f"{flag}: {self.message}"


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type when the message is empty), for a one-line error."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


class Terminated(BaseException):
    """SIGTERM (scancel, preemption, a time limit): unwinds like Ctrl-C so that work in progress
    is saved for ``--resume`` and nothing partial reaches the final path."""
