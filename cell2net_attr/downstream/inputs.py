"""Which attribution files a downstream command reads: paths, run-many directories and ``@FILE`` lists."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .._lists import is_list_file, read_list_file
from ..errors import UserError

ATTRIBUTION_SUFFIXES = (".h5", ".hdf5", ".h5ad")


def collect_attribution_files(items: Iterable[str]) -> list[Path]:
    """Attribution files from paths, directories (their ``*.h5``/``*.hdf5``/``*.h5ad``, sorted) and ``@FILE`` lists.

    ``@-`` reads the list from standard input. Raises :class:`UserError` for a missing path, a
    ``.npy`` output (it has no cell names), an empty input or a gene given twice.
    """
    found: list[Path] = []
    for item in items:
        if is_list_file(item):
            found += [Path(line) for line in read_list_file(item, "file list")]
        elif Path(item).is_dir():
            inside = sorted(p for p in Path(item).iterdir()
                            if p.suffix.lower() in ATTRIBUTION_SUFFIXES and not p.name.startswith(".") and p.is_file())
            if not inside:
                npy = any(p.suffix.lower() == ".npy" for p in Path(item).iterdir())
                raise UserError("directory holds only .npy outputs, which have no cell names; rerun run-many with "
                                "--format h5" if npy else "directory holds no attribution files (*.h5, *.h5ad)", item)
            found += inside
        else:
            found.append(Path(item))
    if not found:
        raise UserError("no attribution files given", "ATTR")
    for p in found:
        if p.suffix.lower() == ".npy":
            raise UserError("a .npy output has no cell names to group by; use --out G.h5 or G.h5ad", p)
        if not p.is_file():
            raise UserError("attribution file not found" if not p.exists() else "not a file", p)
    return found
