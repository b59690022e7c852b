"""Summary tables on disk: TSV/CSV (optionally gzipped) in, TSV/CSV or stdout out, written atomically."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError, first_line
from ..io.schema import FEATURE_LABEL
from ..io.writers import atomic_output, check_output_path
from . import kinds
from .summary import KNOWN_COLUMNS, STAT_COLUMNS, Summary

#: Table suffixes (optionally followed by ``.gz``) and their separators.
TABLE_SEPARATORS = {".tsv": "\t", ".txt": "\t", ".csv": ","}


FLOAT_FORMAT = "%.8g"


@dataclass
class TableInput:
    """A table given to a downstream command, its header read: the path (``-`` = stdin, read once), the text
    source, the separator, the columns and what the columns say it is (:func:`kinds.table_kind`)."""

    path: str | Path
    source: Path | io.StringIO
    sep: str
    columns: list[str]
    kind: str


def open_table(path: str | Path) -> TableInput:
    """Read the header of a TSV/CSV table (``-`` = TSV on stdin)."""
    if str(path) == "-":
        source, sep = io.StringIO(sys.stdin.read()), "\t"
    else:
        source = Path(path)
        if not source.is_file():
            raise UserError("summary table not found" if not source.exists() else "not a file", path)
        sep = table_separator(source)
    try:
        cols = [str(c) for c in pd.read_csv(source, sep=sep, nrows=0).columns]
    except (ValueError, OSError, UnicodeDecodeError, EOFError) as exc:  # pandas' parser errors are ValueErrors
        raise UserError(f"cannot read table ({first_line(exc, 120)})", path) from exc
    if isinstance(source, io.StringIO):
        source.seek(0)
    return TableInput(path, source, sep, cols, kinds.table_kind(cols))


def table_file_kind(path: str | Path) -> str:
    """What a table file is by its columns: ``summary``, ``activity``, ``top_tfs`` or ``""``."""
    return open_table(path).kind


def read_summary(paths: Iterable[str | Path | TableInput], command: str = "activity") -> Summary:
    """Summaries written by ``summarize``, concatenated: tables (TSV/CSV, possibly gzipped; ``-`` = TSV on
    stdin) or ``.h5ad`` files.

    The group column is the one column besides the known ones; a table without one is a whole-population
    table. A ``tf`` column makes a TF table, a ``peak`` column a peak table. Groups keep the order in which
    they first appear. The tool's other tables (activity, top TFs) are refused, naming what they are and
    which command takes them (``command`` is the one reading).
    """
    tables, groupby, target, source = [], None, None, None
    for path in paths:
        this, kind, table = _read_one_summary(path, command)
        where = path.path if isinstance(path, TableInput) else path
        if tables and this != groupby:
            raise UserError(f"grouped by {this!r} but {source} by {groupby!r}", where)
        if tables and kind != target:
            raise UserError(f"a {FEATURE_LABEL[kind]} table but {source} is a {FEATURE_LABEL[target]} table: "
                            f"give them separately", where)
        groupby, target, source = this, kind, where
        tables.append(table)
    if not tables:
        raise UserError("no summary tables given", "TABLE")
    table = pd.concat(tables, ignore_index=True)
    if groupby is not None:
        table[groupby] = pd.Categorical(table[groupby], categories=list(pd.unique(table[groupby])))
    return Summary(table, groupby, list(pd.unique(table["gene"])), target=target)


def _read_one_summary(path: str | Path | TableInput, command: str) -> tuple[str | None, str, pd.DataFrame]:
    if not isinstance(path, TableInput) and is_h5ad(path):
        from .adata import summary_from_h5ad

        return summary_from_h5ad(path)
    table_in = path if isinstance(path, TableInput) else open_table(path)
    path, source, sep, cols = table_in.path, table_in.source, table_in.sep, table_in.columns
    if table_in.kind not in ("summary", ""):
        raise kinds.refusal(path, table_in.kind, command)
    target = "peaks" if "peak" in cols and "tf" not in cols else "tfs"
    feature = "peak" if target == "peaks" else "tf"
    lacking = [c for c in (feature, "gene", "mean_attr") if c not in cols]
    if lacking:
        raise UserError(f"not a summary table: no {lacking[0]!r} column", path)
    extra = [c for c in cols if c not in KNOWN_COLUMNS]
    if len(extra) > 1:
        raise UserError(f"cannot tell the group column among {extra}", path)
    text = {c: str for c in (feature, "gene", *extra)}
    numbers = {c: ["", "nan", "NaN"] for c in STAT_COLUMNS["peaks"]}
    try:
        table = pd.read_csv(source, sep=sep, dtype=text, keep_default_na=False, na_values=numbers)
    except (ValueError, OSError, UnicodeDecodeError, EOFError) as exc:
        raise UserError(f"cannot read table ({first_line(exc, 120)})", path) from exc
    for c in (c for c in STAT_COLUMNS["peaks"] if c in table.columns):
        if not pd.api.types.is_numeric_dtype(table[c]) or table[c].isna().any():
            raise UserError(f"column {c!r} holds a value that is not a number", path)
    return (extra[0] if extra else None), target, table


def read_activity(path: str | Path | TableInput) -> tuple[pd.DataFrame, list[str]]:
    """An activity matrix written by ``activity`` (a table, or ``.h5ad``): TF x group, and the genes it sums
    over when the file records them (a table does not; nor does it keep the group column's name)."""
    if not isinstance(path, TableInput) and is_h5ad(path):
        from .adata import activity_from_h5ad

        return activity_from_h5ad(path)
    table_in = path if isinstance(path, TableInput) else open_table(path)
    try:
        matrix = pd.read_csv(table_in.source, sep=table_in.sep, index_col=0, dtype={table_in.columns[0]: str})
    except (ValueError, OSError, UnicodeDecodeError, EOFError) as exc:
        raise UserError(f"cannot read table ({first_line(exc, 120)})", table_in.path) from exc
    bad = [c for c in matrix.columns if not pd.api.types.is_numeric_dtype(matrix[c]) or matrix[c].isna().any()]
    if bad:
        raise UserError(f"column {bad[0]!r} holds a value that is not a number", table_in.path)
    matrix = matrix.astype(np.float64)
    matrix.columns.name = None
    return matrix, []


def is_table(path: str | Path) -> bool:
    """Whether a path names a TSV/CSV table (by its suffix, ``.gz`` allowed)."""
    p = Path(str(path))
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] in TABLE_SEPARATORS


def table_separator(path: str | Path) -> str:
    """The separator a table path's suffix names; ``-`` (stdout) is TSV."""
    if str(path) == "-":
        return "\t"
    p = Path(str(path))
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if not suffixes or suffixes[-1] not in TABLE_SEPARATORS:
        raise UserError(f"unknown table format {p.suffix!r}: use .tsv, .csv (optionally .gz) or - for stdout", path)
    return TABLE_SEPARATORS[suffixes[-1]]


def is_h5ad(out: str | Path) -> bool:
    """Whether an output path names an AnnData file."""
    return str(out) != "-" and Path(str(out)).suffix.lower() == ".h5ad"


def check_table_output(out: str | Path, overwrite: bool, inputs: Iterable[Path] = (), h5ad: bool = False) -> None:
    """Validate a table output path (``-`` = stdout; ``.h5ad`` too when ``h5ad``) before any work."""
    if str(out) == "-":
        return
    if not (h5ad and is_h5ad(out)):
        try:
            table_separator(out)
        except UserError:
            if not h5ad:
                raise
            raise UserError(f"unknown output format {Path(str(out)).suffix!r}: use .tsv, .csv (optionally .gz), "
                            f".h5ad or - for stdout", out) from None
    check_output_path(Path(out), overwrite, inputs)


def write_summary(summary: Summary, out: str | Path) -> None:
    """A summary as a table (TSV/CSV or stdout) or, for ``.h5ad``, as AnnData."""
    if is_h5ad(out):
        from . import adata

        adata.write_h5ad(adata.summary_anndata(summary), out)
    else:
        write_table(summary.table, out)


def write_activity(matrix: pd.DataFrame, top: pd.DataFrame | None, out: str | Path, var_cutoff: float,
                   genes: list[str] = ()) -> None:
    """The TF x group activity as a table (TSV/CSV or stdout) or, for ``.h5ad``, as AnnData with the
    z-scores and the top TFs (``top`` is ``None`` for one group: neither is written)."""
    if is_h5ad(out):
        from . import adata
        from .activity import zscore_rows

        zscore = zscore_rows(matrix) if top is not None else None
        adata.write_h5ad(adata.activity_anndata(matrix, zscore, top, var_cutoff, genes), out)
    else:
        write_table(matrix, out, index=True)


def write_table(table: pd.DataFrame, out: str | Path, index: bool = False) -> None:
    """Write ``table`` as TSV/CSV by the suffix of ``out`` (``.gz`` compresses), atomically; ``-`` = stdout."""
    sep = table_separator(out)
    if str(out) == "-":
        try:
            table.to_csv(sys.stdout, sep=sep, index=index, float_format=FLOAT_FORMAT, lineterminator="\n")
            sys.stdout.flush()
        except BrokenPipeError:  # `| head`: the reader has what it wanted
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError):
                pass
        return
    out = Path(out)
    with atomic_output(out) as tmp:
        table.to_csv(tmp, sep=sep, index=index, float_format=FLOAT_FORMAT, lineterminator="\n",
                     compression="gzip" if out.suffix.lower() == ".gz" else None)
