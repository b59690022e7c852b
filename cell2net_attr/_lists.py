"""``@FILE`` arguments: one item per line, read from a file or, for ``@-``, from standard input.

The one reader behind ``--idx @FILE``, ``run-many @FILE`` and the downstream commands' ``@FILE``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from .errors import UserError


def is_list_file(item: str) -> bool:
    """Whether an argument names a list (``@FILE`` or ``@-``)."""
    return item.startswith("@") and len(item) > 1


def read_list_file(item: str, what: str, stdin: TextIO | None = None) -> list[str]:
    """Non-blank stripped lines of the list ``item`` (``@FILE`` or ``@-``).

    Parameters
    ----------
    item
        The argument as given, starting with ``@``.
    what
        What the lines are (for the error message), e.g. ``"index file"``.
    stdin
        Stream to read for ``@-`` (default: ``sys.stdin``).
    """
    target = item[1:]
    if target == "-":
        try:
            text = (stdin or sys.stdin).read()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read {what} from standard input ({type(exc).__name__})", "@-") from exc
    else:
        path = Path(target)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read {what} ({exc.__class__.__name__}: {exc})", path) from exc
    return [line.strip() for line in text.splitlines() if line.strip()]
