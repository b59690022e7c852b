"""User-facing errors.

Every failure caused by the user's input (a file, a flag, an index) is raised as a
:class:`UserError`. The CLI prints it as one line and exits with code 2; anything else
is an internal error (exit 1).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
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


class DataMismatchWarning(UserWarning):
    """The data (or the covariate order) given looks unlike what the model was trained on."""


class Terminated(BaseException):
    """SIGTERM (scancel, preemption, a time limit): unwinds like Ctrl-C so that work in progress
    is saved for ``--resume`` and nothing partial reaches the final path."""


def suggest(name: str, choices: Iterable) -> str:
    """`` (did you mean ...?)`` for a misspelt name, or nothing: up to 3 choices, the closest first.

    Case is ignored (``CellType`` finds ``celltype`` first, ``id`` finds ``ID``), and a choice that begins
    with the name, or that the name begins with, counts as close (``cel`` finds ``celltype``).
    """
    key = str(name).lower()
    scored = []
    for i, choice in enumerate(dict.fromkeys(str(c) for c in choices)):
        score = _closeness(key, choice.lower())
        if score >= SUGGEST_CUTOFF:
            scored.append((-score, i, choice))
    close = [c for _, _, c in sorted(scored)[:3]]
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


SUGGEST_CUTOFF = 0.6  # difflib's default


def _closeness(key: str, low: str) -> float:
    """How close two lower-cased names are: 2 when equal, else difflib's ratio, raised for a prefix."""
    if key == low:
        return 2.0
    prefix = 0.0
    if len(key) >= 2 and (low.startswith(key) or key.startswith(low)):
        prefix = 0.6 + 0.4 * min(len(key), len(low)) / max(len(key), len(low))
    matcher = difflib.SequenceMatcher(None, key, low)
    if not prefix and (matcher.real_quick_ratio() < SUGGEST_CUTOFF or matcher.quick_ratio() < SUGGEST_CUTOFF):
        return 0.0  # upper bounds of the ratio: the full one is not needed
    return max(prefix, matcher.ratio())
