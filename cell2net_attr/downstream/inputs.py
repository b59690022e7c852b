"""Which files a downstream command reads: paths, run-many directories and ``@FILE`` lists, and what they are."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

from .._lists import is_list_file, read_list_file
from ..errors import UserError
from . import kinds

ATTRIBUTION_SUFFIXES = (".h5", ".hdf5", ".h5ad")


def collect_attribution_files(items: Iterable[str]) -> list[Path]:
    """Attribution files from paths, directories (their ``*.h5``/``*.hdf5``/``*.h5ad``, sorted) and ``@FILE`` lists.

    ``@-`` reads the list from standard input. Raises :class:`UserError` for a missing path, a
    ``.npy`` output (it has no cell names), an empty input, or a file of another kind (a summary, the data,
    a checkpoint: the message says what it is and which command takes it).
    """
    return collect_inputs(items, "summarize")[1]


def collect_inputs(items: Iterable[str], command: str = "summarize") -> tuple[str, list[Path]]:
    """The files ``items`` name (as :func:`collect_attribution_files`) and their one kind: ``attributions``, or
    for the commands that take them (:data:`kinds.ACCEPTS`) ``summary`` or ``activity`` AnnData outputs.

    In a directory, files of another kind (a summary written beside the attributions) are skipped with a
    warning; a file of another kind named on its own is refused, as is a mix of kinds.
    """
    found: list[tuple[Path, bool]] = []  # (path, named on its own)
    for item in items:
        if is_list_file(item):
            found += [(Path(line), True) for line in read_list_file(item, "file list")]
        elif Path(item).is_dir():
            inside = sorted(p for p in Path(item).iterdir()
                            if p.suffix.lower() in ATTRIBUTION_SUFFIXES and not p.name.startswith(".") and p.is_file())
            if not inside:
                npy = any(p.suffix.lower() == ".npy" for p in Path(item).iterdir())
                raise UserError("directory holds only .npy outputs, which have no cell names; rerun run-many with "
                                "--format h5" if npy else "directory holds no attribution files (*.h5, *.h5ad)", item)
            found += [(p, False) for p in inside]
        else:
            found.append((Path(item), True))
    if not found:
        raise UserError("no attribution files given", "ATTR")
    files, seen = [], {}
    for p, named in found:
        kind = _kind(p, command)
        if kind != "attributions" and not named:
            warnings.warn(f"skipped {p}: {kinds.WHAT[kind]}, not an attribution file", stacklevel=2)
            continue
        if kind not in kinds.ACCEPTS[command]:
            raise kinds.refusal(p, kind, command)
        if seen and kind not in seen:
            other, first = next(iter(seen.items()))
            raise UserError(f"{kinds.WHAT[kind]}, but {first} is {kinds.WHAT[other]}: give one kind of input", p)
        seen.setdefault(kind, p)
        files.append(p)
    if not files:
        raise UserError("no attribution files given", "ATTR")
    return next(iter(seen)), files


def _kind(p: Path, command: str) -> str:
    """What ``p`` is; ``attributions`` when it does not say (its reader checks it)."""
    from .tables_io import is_table, table_file_kind

    if p.suffix.lower() == ".npy":
        raise UserError("a .npy output has no cell names to group by; use --out G.h5 or G.h5ad", p)
    if not p.is_file():
        raise UserError("attribution file not found" if not p.exists() else "not a file", p)
    if is_table(p):
        kind = table_file_kind(p)
        if not kind:
            raise UserError(f"a table, not an attribution file; {kinds.TAKES[command]}", p)
        if command != "summarize":
            raise UserError("give tables on their own, not among attribution files", p)
        return kind
    return kinds.file_kind(p) or "attributions"
