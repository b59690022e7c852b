"""Which checkpoints ``run-many MODELS`` means: directories, checkpoint files and ``@FILE`` lists.

A directory stands for its ``*.pt``. A list holds one checkpoint per line, as a path (relative to the list
file's own folder; ``@-`` lists are relative to the working directory) or as a gene name. Gene names are
looked up as ``<DIR>/<gene>.pt`` in the directories given among MODELS; a directory given beside a list of
gene names is only where they are found, not a request for all its checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from .._lists import is_list_file, read_list_file
from ..errors import UserError, suggest


def collect_checkpoints(items: list[str]) -> list[Path]:
    """Checkpoints from directories, files and ``@FILE`` lists (paths or gene names), in order, each once."""
    dirs = [Path(i) for i in items if not is_list_file(i) and Path(i).is_dir()]
    lists = {i: _list_entries(i) for i in items if is_list_file(i)}
    names_listed = any(isinstance(e, str) for entries in lists.values() for e in entries)
    found: list[Path] = []
    for item in items:
        if is_list_file(item):
            found += [e if isinstance(e, Path) else _by_name(e, dirs, item) for e in lists[item]]
        elif Path(item).is_dir():
            if not names_listed:
                found += sorted(Path(item).glob("*.pt"))
        else:
            found.append(Path(item))
    missing = [str(p) for p in found if not p.is_file()]
    if missing:
        raise UserError(f"checkpoint(s) not found: {', '.join(missing[:5])}", missing[0])
    if not found:
        raise UserError("no checkpoints (*.pt) found", " ".join(items))
    found = _unique_files(found)
    stems = [p.stem for p in found]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise UserError(f"several checkpoints for gene(s) {dup[:5]}: outputs are named by gene", "MODELS")
    return found


def _list_entries(item: str) -> list[Path | str]:
    """A list's lines: paths (resolved against the list's folder) or gene names (str)."""
    base = Path(".") if item == "@-" else Path(item[1:]).parent
    entries: list[Path | str] = []
    for line in read_list_file(item, "checkpoint list"):
        path = Path(line)
        if not path.is_absolute():
            path = base / path
        if path.is_file() or "/" in line or line.endswith(".pt"):
            entries.append(path)
        else:
            entries.append(line)
    return entries


def _by_name(gene: str, dirs: list[Path], listing: str) -> Path:
    """The checkpoint of ``gene`` in one of the model directories."""
    if not dirs:
        raise UserError(f"'{gene}' is a gene name, not a checkpoint file: give the directory that holds "
                        f"{gene}.pt among MODELS (e.g. run-many models/ {listing} data.h5mu)", listing[1:] or listing)
    for d in dirs:
        if (d / f"{gene}.pt").is_file():
            return d / f"{gene}.pt"
    known = [p.stem for d in dirs for p in d.glob("*.pt")]
    raise UserError(f"gene '{gene}' has no checkpoint {gene}.pt in {', '.join(map(str, dirs))}"
                    f"{suggest(gene, known)}", listing[1:] or listing)


def _unique_files(paths: list[Path]) -> list[Path]:
    """Each file once (a directory and a file in it name the same checkpoint), in first-seen order."""
    seen: dict[Path, Path] = {}
    for p in paths:
        seen.setdefault(p.resolve(), p)
    return list(seen.values())
