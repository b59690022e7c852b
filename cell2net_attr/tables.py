"""Downstream tables from attribution files: upstream's ``tf_to_gene`` and ``get_top_tfs``, for many genes.

Definitions (those of cell2net 0.13's interpretation module, written anew here):

* **summary** (``tf_to_gene``): for each gene, group and TF, ``mean_attr`` and ``std_attr`` (population
  standard deviation, ddof 0) of the attributions over the cells of the group; columns ``tf``, ``gene``,
  ``<groupby>``, ``mean_attr``, ``std_attr``, then ``n_cells`` (cells of the group in the file) and
  ``frac_pos`` (fraction of them with a positive attribution). With ``n_tfs``, only the ``n_tfs`` TFs
  of largest ``mean_attr`` per gene and group, in descending order; otherwise every TF in the file's order.
* **activity**: TF x group, the sum of ``mean_attr`` over genes (a TF absent from a gene's table counts 0).
* **top variable TFs** (``get_top_tfs``): rank TFs by their variance across groups (ddof 1), keep the first
  ``int(n_tfs * var_cutoff)``, z-score each TF across groups (ddof 1) and list the ``n_top`` TFs of
  highest z-score per group.

Decisions: cells are matched to ``obs`` rows by name; cells whose group is missing (NaN) are left out and
counted; a categorical column's groups follow its category order, any other column's its sorted unique
values (as ``np.unique`` does upstream); groups without cells give no rows; TFs of equal mean keep the file's
TF order, TFs of equal z-score the order by variance (then first appearance over genes).
"""

from __future__ import annotations

import difflib
import io
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from .errors import UserError
from .writers import atomic_output, check_output_path

#: Columns of a summary table besides the group column.
SUMMARY_COLUMNS = ("tf", "gene", "mean_attr", "std_attr", "n_cells", "frac_pos")
#: Table suffixes (optionally followed by ``.gz``) and their separators.
TABLE_SEPARATORS = {".tsv": "\t", ".txt": "\t", ".csv": ","}
ATTRIBUTION_SUFFIXES = (".h5", ".hdf5", ".h5ad")
FLOAT_FORMAT = "%.8g"


# --------------------------------------------------------------------------------------------- inputs

@dataclass
class Attributions:
    """One attribution file: cells x TFs float32 with the names of both axes."""

    path: Path
    gene: str
    obs_names: pd.Index
    tf_names: list[str]
    values: np.ndarray
    shard: tuple[int, int] | None = None  # (index, count) when the file is one shard of a run


def collect_attribution_files(items: Iterable[str]) -> list[Path]:
    """Attribution files from paths, directories (their ``*.h5``/``*.hdf5``/``*.h5ad``, sorted) and ``@FILE`` lists.

    ``@-`` reads the list from standard input. Raises :class:`UserError` for a missing path, a
    ``.npy`` output (it has no cell names), an empty input or a gene given twice.
    """
    found: list[Path] = []
    for item in items:
        if item.startswith("@"):
            found += _read_list(item[1:])
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


def _read_list(name: str) -> list[Path]:
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read file list ({type(exc).__name__})", name) from None
    return [Path(line.strip()) for line in text.splitlines() if line.strip()]


def _strings(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def read_attributions(path: str | Path) -> Attributions:
    """Read and check one attribution file written by ``cell2net-attr run``: HDF5 (``.h5``/``.hdf5``) or
    AnnData (``.h5ad``: ``X`` cells x TFs, ``var`` = TFs, the run's parameters in ``uns["cell2net_attr"]``).

    The gene is the file's ``gene`` attribute (its stem when absent). Raises :class:`UserError` when
    the file is not such a file, its axes disagree, a name repeats or a value is NaN/Inf.
    """
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            values, obs, tfs, meta = _read_h5ad(f, path) if path.suffix.lower() == ".h5ad" else _read_h5(f, path)
    except OSError as exc:
        raise UserError(f"not a readable HDF5 file ({(str(exc).splitlines() or [''])[0][:120]})", path) from None
    gene = meta.get("gene", path.stem)
    gene = gene.decode() if isinstance(gene, bytes) else str(gene)
    count = int(meta.get("shard_count", 1))
    shard = (int(meta.get("shard_index", 0)), count) if count > 1 else None
    if values.ndim != 2 or values.shape != (len(obs), len(tfs)):
        raise UserError(f"attributions have shape {list(values.shape)} but the file names {len(obs)} cells and "
                        f"{len(tfs)} TFs", path)
    if not obs:
        raise UserError("the file holds zero cells", path)
    for what, names in (("cell", obs), ("TF", tfs)):
        seen = pd.Index(names)
        if not seen.is_unique:
            raise UserError(f"{what} {seen[seen.duplicated()][0]!r} appears more than once", path)
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise UserError(f"attribution of cell {obs[r]!r} for {tfs[c]!r} is {values[r, c]}", path)
    return Attributions(path, gene, pd.Index(obs), tfs, values, shard)


def _read_h5(f: h5py.File, path: Path) -> tuple[np.ndarray, list[str], list[str], dict]:
    missing = [k for k in ("attributions", "obs_names", "tf_names") if k not in f]
    if missing:
        raise UserError(f"not a cell2net-attr attribution file: no {missing[0]!r} dataset", path)
    return (np.asarray(f["attributions"][()], dtype=np.float32), _strings(f["obs_names"][()]),
            _strings(f["tf_names"][()]), dict(f.attrs))


def _read_h5ad(f: h5py.File, path: Path) -> tuple[np.ndarray, list[str], list[str], dict]:
    from anndata.io import read_elem

    missing = [k for k in ("X", "obs", "var") if k not in f]
    if missing:
        raise UserError(f"not an AnnData attribution file: no {missing[0]!r}", path)
    try:
        x = read_elem(f["X"])
        x = x.toarray() if hasattr(x, "toarray") else x
        names = [_strings(np.asarray(read_elem(f[k][f[k].attrs["_index"]]))) for k in ("obs", "var")]
        meta = read_elem(f["uns/cell2net_attr"]) if "uns/cell2net_attr" in f else {}
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"cannot read the AnnData file ({(str(exc).splitlines() or [''])[0][:120]})", path) from None
    return np.asarray(x, dtype=np.float32), names[0], names[1], dict(meta) if isinstance(meta, dict) else {}


@dataclass
class Groups:
    """Group labels of the cells of a data file, by obs name.

    ``codes[i]`` is the position in ``order`` of cell ``names[i]``'s group, ``-1`` when it is missing (NaN).
    """

    column: str
    names: pd.Index
    codes: np.ndarray
    order: list
    _last: tuple = field(default=(), repr=False)

    def codes_for(self, obs_names: pd.Index, source: str | Path) -> np.ndarray:
        """The codes of the cells ``obs_names`` (matched by name); unknown names are a :class:`UserError`."""
        if self._last and self._last[0].equals(obs_names):  # run-many outputs share their cells
            return self._last[1]
        unique = ~self.names.duplicated(keep=False)
        names = self.names if unique.all() else self.names[unique]
        pos = names.get_indexer(obs_names)
        if (pos < 0).any():
            absent = obs_names[pos < 0]
            twice = absent.intersection(self.names)
            if len(twice):
                raise UserError(f"cell {twice[0]!r} appears more than once in the data's obs, so it cannot be "
                                f"matched by name", source)
            raise UserError(f"{len(absent)} of its {len(obs_names)} cells are not in the data's obs (first: "
                            f"{absent[0]!r}): the attributions were computed on other data", source)
        codes = (self.codes if unique.all() else self.codes[unique])[pos]
        self._last = (obs_names, codes)
        return codes


def read_groups(data: str | Path | object, column: str) -> Groups:
    """The groups of obs column ``column`` of an ``.h5mu`` path or MuData, ordered as documented above."""
    from .data import open_store

    store = open_store(data)
    try:
        present = store.columns("obs")
        if column not in present:
            close = difflib.get_close_matches(column, present, n=3)
            hint = (f" (did you mean {', '.join(map(repr, close))}?)" if close
                    else f"; its columns: {', '.join(present[:20])}")
            raise UserError(f"obs has no column {column!r}{hint}", "--groupby")
        names = store.index("obs")
        values = store.column("obs", column)
    finally:
        if store is not data:
            store.close()
    return groups_from_values(column, names, values, str(getattr(store, "source", data)))


def groups_from_values(column: str, names: Iterable, values, source: str = "<data>") -> Groups:
    """:class:`Groups` from labels (categorical, strings, numbers; NaN/None = missing) of the cells ``names``."""
    names = pd.Index([str(n) for n in names])
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    if series.ndim != 1 or len(series) != len(names):
        raise UserError(f"obs column {column!r} has {len(series)} values for {len(names)} cells", source)
    missing = series.isna().to_numpy()
    if isinstance(series.dtype, pd.CategoricalDtype):
        order = list(series.cat.categories)
    else:
        present = pd.unique(series[~missing].to_numpy(dtype=object))
        try:
            order = sorted(present)
        except TypeError:  # mixed types: sort by their text
            order = sorted(present, key=str)
    codes = pd.Index(order, dtype=object).get_indexer(series.to_numpy(dtype=object)) if order else \
        np.full(len(series), -1)
    codes = np.where(missing, -1, codes).astype(np.int64)
    return Groups(column, names, codes, order)


# --------------------------------------------------------------------------------------------- statistics

@dataclass
class GeneStats:
    """Per-group statistics of one gene's attributions (groups with at least one cell)."""

    gene: str
    tfs: list[str]
    groups: list  # labels, in order
    n_cells: np.ndarray  # (G,)
    mean: np.ndarray  # (G, T) float64
    std: np.ndarray  # (G, T) float64, ddof 0
    n_pos: np.ndarray  # (G, T) cells with attribution > 0
    n_missing: int = 0  # cells left out because their group is missing
    shard: tuple[int, int] | None = None


def gene_stats(attr: Attributions, groups: Groups | None) -> GeneStats:
    """Mean, std (ddof 0) and positive count per group and TF; ``groups=None`` = all cells as one group."""
    if groups is None:
        codes, labels = np.zeros(len(attr.obs_names), dtype=np.int64), [None]
    else:
        codes, labels = groups.codes_for(attr.obs_names, attr.path), groups.order
    kept = codes >= 0
    n_missing = int((~kept).sum())
    order = np.argsort(codes[kept], kind="stable")
    x = attr.values[kept][order]
    counts = np.bincount(codes[kept], minlength=len(labels))
    present = np.flatnonzero(counts)
    starts = np.concatenate([[0], np.cumsum(counts[present])[:-1]]).astype(np.int64)
    t = len(attr.tf_names)
    if len(present) == 0:
        empty = np.zeros((0, t))
        return GeneStats(attr.gene, attr.tf_names, [], np.zeros(0, np.int64), empty, empty,
                         np.zeros((0, t), np.int64), n_missing, attr.shard)
    n = counts[present]
    mean = np.add.reduceat(x, starts, axis=0, dtype=np.float64) / n[:, None]
    dev = x - np.repeat(mean, n, axis=0)
    std = np.sqrt(np.add.reduceat(dev * dev, starts, axis=0) / n[:, None])
    n_pos = np.add.reduceat((x > 0).astype(np.int64), starts, axis=0)
    return GeneStats(attr.gene, attr.tf_names, [labels[i] for i in present], n.astype(np.int64), mean, std,
                     n_pos, n_missing, attr.shard)


def top_order(values: np.ndarray, n: int | None) -> np.ndarray:
    """Positions of the ``n`` largest values, largest first, ties in their original order (all when ``None``)."""
    order = np.argsort(-np.asarray(values, dtype=np.float64), kind="stable")
    return order if n is None else order[:n]


def tf_to_gene(stats: GeneStats, groupby: str | None = None, n_tfs: int | None = None,
               group_order: list | None = None) -> pd.DataFrame:
    """Upstream's ``tf_to_gene`` table for one gene (see the module docstring).

    ``groupby=None`` gives the whole-population table (no group column). ``group_order`` (all groups of
    the column) makes the group column categorical in that order, so tables of many genes agree.
    """
    blocks = []
    tfs = np.asarray(stats.tfs, dtype=object)
    for g, label in enumerate(stats.groups):
        pick = np.arange(len(tfs)) if n_tfs is None else top_order(stats.mean[g], n_tfs)
        block = {"tf": tfs[pick], "gene": stats.gene}
        if groupby is not None:
            block[groupby] = [label] * len(pick)
        block.update(mean_attr=stats.mean[g, pick], std_attr=stats.std[g, pick],
                     n_cells=int(stats.n_cells[g]), frac_pos=stats.n_pos[g, pick] / stats.n_cells[g])
        blocks.append(pd.DataFrame(block))
    columns = ["tf", "gene", *([groupby] if groupby is not None else []), *SUMMARY_COLUMNS[2:]]
    table = pd.concat(blocks, ignore_index=True) if blocks else pd.DataFrame(columns=columns)
    if groupby is not None:
        order = group_order if group_order is not None else list(stats.groups)
        table[groupby] = pd.Categorical(table[groupby], categories=order)
    return table[columns]


@dataclass
class Summary:
    """The concatenated ``tf_to_gene`` tables of many genes, with what was left out."""

    table: pd.DataFrame
    groupby: str | None
    genes: list[str]
    missing: dict[str, int] = field(default_factory=dict)  # gene -> cells with a missing group
    shards: dict[str, tuple[int, int]] = field(default_factory=dict)  # gene -> (index, count) of partial files
    empty_groups: list = field(default_factory=list)  # groups of the column with no cell in any file

    def notes(self) -> list[str]:
        """One-line remarks for the log (cells left out, partial shard files)."""
        out = []
        if self.missing:
            counts = set(self.missing.values())
            if len(counts) == 1 and len(self.missing) == len(self.genes):
                out.append(f"{counts.pop()} cell(s) with no {self.groupby!r} value (NaN) left out of every gene")
            else:
                listed = ", ".join(f"{g} {n}" for g, n in list(self.missing.items())[:5])
                more = f" and {len(self.missing) - 5} more genes" if len(self.missing) > 5 else ""
                out.append(f"cells with no {self.groupby!r} value (NaN) left out: {listed}{more}")
        if self.empty_groups:
            listed = ", ".join(map(str, self.empty_groups[:10]))
            out.append(f"group(s) {listed} of {self.groupby!r} have no cells in the attribution files (no rows)")
        for gene, (k, n) in list(self.shards.items())[:5]:
            out.append(f"{gene}: the file holds shard {k}/{n} only; merge the shards first "
                       f"(cell2net-attr merge) to summarize every cell")
        return out


def summarize(files: Iterable[str | Path], data: str | Path | object | None = None, groupby: str | None = None,
              n_tfs: int | None = None, on_gene: Callable[[int, str], None] | None = None) -> Summary:
    """``tf_to_gene`` for every attribution file, concatenated in the files' order.

    Parameters
    ----------
    files
        HDF5 attribution files (see :func:`collect_attribution_files` for directories and lists).
    data
        The ``.h5mu`` (or MuData) holding the ``groupby`` column; needed only with ``groupby``.
    groupby
        obs column; ``None`` = one table over all cells of each file.
    n_tfs
        Keep the ``n_tfs`` TFs of largest mean attribution per gene and group.
    on_gene
        Called with (position, gene) after each file.
    """
    check_top(n_tfs, "--top")
    groups = None
    if groupby is not None:
        if data is None:
            raise UserError("needed with --groupby: the .h5mu whose obs holds the column", "--data")
        groups = read_groups(data, groupby)
    tables, genes, missing, shards = [], {}, {}, {}
    for i, path in enumerate(files):
        attr = read_attributions(path)
        if attr.gene in genes:
            shard = attr.shard or shards.get(attr.gene)
            hint = " (shards of one run: merge them first with cell2net-attr merge)" if shard else ""
            raise UserError(f"gene {attr.gene!r} is also in {genes[attr.gene]}{hint}", path)
        genes[attr.gene] = path
        stats = gene_stats(attr, groups)
        if stats.n_missing:
            missing[attr.gene] = stats.n_missing
        if stats.shard:
            shards[attr.gene] = stats.shard
        tables.append(tf_to_gene(stats, groupby, n_tfs, groups.order if groups else None))
        if on_gene is not None:
            on_gene(i, attr.gene)
    if not tables:
        raise UserError("no attribution files given", "ATTR")
    table = pd.concat(tables, ignore_index=True)
    empty = []
    if groupby is not None:  # concat keeps the categorical only when every table had rows
        table[groupby] = pd.Categorical(table[groupby], categories=groups.order)
        seen = set(table[groupby].dropna().unique())
        empty = [g for g in groups.order if g not in seen]
    return Summary(table, groupby, list(genes), missing, shards, empty)


def limit_per_gene(summary: Summary, n_tfs: int) -> Summary:
    """Keep each gene's ``n_tfs`` TFs of largest ``mean_attr`` per group (largest first, ties in table order)."""
    check_top(n_tfs, "--per-gene-top")
    table = summary.table
    keys = [table["gene"]] + ([table[summary.groupby]] if summary.groupby else [])
    order = np.argsort(-table["mean_attr"].to_numpy(dtype=np.float64), kind="stable")
    ranked = table.iloc[order]
    rank = ranked.groupby([k.iloc[order] for k in keys], sort=False, observed=True).cumcount()
    kept = ranked[rank.to_numpy() < n_tfs]
    # back to gene, then group order, the TFs of each largest first
    first = pd.Series(np.arange(len(table)), index=table.index)
    block = kept.groupby([k.loc[kept.index] for k in keys], sort=False, observed=True).ngroup()
    start = first.loc[kept.index].groupby(block.to_numpy()).transform("min")
    kept = kept.iloc[np.lexsort((np.arange(len(kept)), start.to_numpy()))].reset_index(drop=True)
    return Summary(kept, summary.groupby, summary.genes, summary.missing, summary.shards, summary.empty_groups)


def check_top(n: int | None, flag: str) -> None:
    """A ``--top``-like count must be a positive integer."""
    if n is not None and n < 1:
        raise UserError(f"must be a positive number of TFs, got {n}", flag)


# --------------------------------------------------------------------------------------------- summary tables as input

def read_summary(paths: Iterable[str | Path]) -> Summary:
    """Summary tables written by ``summarize`` (TSV/CSV, possibly gzipped; ``-`` = TSV on stdin), concatenated.

    The group column is the one column besides the known ones; a table without one is a whole-population
    table. Groups keep the order in which they first appear.
    """
    tables, groupby, source = [], None, None
    for path in paths:
        this, table = _read_one_summary(path)
        if tables and this != groupby:
            raise UserError(f"grouped by {this!r} but {source} by {groupby!r}", path)
        groupby, source = this, path
        tables.append(table)
    if not tables:
        raise UserError("no summary tables given", "TABLE")
    table = pd.concat(tables, ignore_index=True)
    if groupby is not None:
        table[groupby] = pd.Categorical(table[groupby], categories=list(pd.unique(table[groupby])))
    return Summary(table, groupby, list(pd.unique(table["gene"])))


def _read_one_summary(path: str | Path) -> tuple[str | None, pd.DataFrame]:
    if str(path) == "-":
        source, sep = io.StringIO(sys.stdin.read()), "\t"
    else:
        source = Path(path)
        if not source.is_file():
            raise UserError("summary table not found" if not source.exists() else "not a file", path)
        sep = table_separator(source)
    try:
        head = pd.read_csv(source, sep=sep, nrows=0)
        cols = [str(c) for c in head.columns]
        lacking = [c for c in ("tf", "gene", "mean_attr") if c not in cols]
        if lacking:
            raise UserError(f"not a summary table: no {lacking[0]!r} column", path)
        extra = [c for c in cols if c not in SUMMARY_COLUMNS]
        if len(extra) > 1:
            raise UserError(f"cannot tell the group column among {extra}", path)
        if isinstance(source, io.StringIO):
            source.seek(0)
        text = {c: str for c in ("tf", "gene", *extra)}
        numbers = {c: ["", "nan", "NaN"] for c in SUMMARY_COLUMNS[2:]}
        table = pd.read_csv(source, sep=sep, dtype=text, keep_default_na=False, na_values=numbers)
    except (ValueError, OSError, UnicodeDecodeError, EOFError) as exc:  # pandas' parser errors are ValueErrors
        raise UserError(f"cannot read table ({(str(exc).splitlines() or [''])[0][:120]})", path) from None
    for c in (c for c in SUMMARY_COLUMNS[2:] if c in table.columns):
        if not pd.api.types.is_numeric_dtype(table[c]) or table[c].isna().any():
            raise UserError(f"column {c!r} holds a value that is not a number", path)
    return (extra[0] if extra else None), table


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


# --------------------------------------------------------------------------------------------- activity

def _group_column(summary: Summary) -> tuple[pd.Series, list]:
    if summary.groupby is None:
        return pd.Series(["all cells"] * len(summary.table), index=summary.table.index), ["all cells"]
    col = summary.table[summary.groupby]
    cats = list(col.cat.categories)
    present = set(col.dropna().unique())
    return col, [c for c in cats if c in present]


def _tf_order(table: pd.DataFrame) -> list[str]:
    return list(pd.unique(table["tf"]))


def activity_matrix(summary: Summary) -> pd.DataFrame:
    """TF x group: the sum of ``mean_attr`` over genes (0 where no gene's table has the TF).

    TFs in order of first appearance, groups in the summary's group order.
    """
    col, groups = _group_column(summary)
    frame = pd.DataFrame({"tf": summary.table["tf"].to_numpy(), "group": np.asarray(col, dtype=object),
                          "v": summary.table["mean_attr"].to_numpy(dtype=np.float64)})
    sums = frame.groupby(["tf", "group"], sort=False)["v"].sum().unstack("group")
    matrix = sums.reindex(index=_tf_order(summary.table), columns=groups).fillna(0.0)
    matrix.index.name, matrix.columns.name = "tf", summary.groupby
    return matrix


def pooled_matrices(summary: Summary) -> tuple[pd.DataFrame, pd.DataFrame]:
    """TF x group mean attribution and fraction of positive attributions, pooled over the cells of all genes
    whose table has the TF (weighted by ``n_cells``; equal to the gene's own values for one gene). NaN where
    no gene has the TF for that group. Needs ``n_cells`` and ``frac_pos`` (tables from ``summarize``)."""
    lacking = [c for c in ("n_cells", "frac_pos") if c not in summary.table.columns]
    if lacking:
        raise UserError(f"the dotplot needs the {lacking[0]!r} column that cell2net-attr summarize writes", "TABLE")
    col, groups = _group_column(summary)
    n = summary.table["n_cells"].to_numpy(dtype=np.float64)
    frame = pd.DataFrame({"tf": summary.table["tf"].to_numpy(), "group": np.asarray(col, dtype=object), "n": n,
                          "s": summary.table["mean_attr"].to_numpy(dtype=np.float64) * n,
                          "p": summary.table["frac_pos"].to_numpy(dtype=np.float64) * n})
    sums = frame.groupby(["tf", "group"], sort=False)[["n", "s", "p"]].sum()
    index, columns = _tf_order(summary.table), groups
    mean = (sums["s"] / sums["n"]).unstack("group").reindex(index=index, columns=columns)
    frac = (sums["p"] / sums["n"]).unstack("group").reindex(index=index, columns=columns)
    for m in (mean, frac):
        m.index.name, m.columns.name = "tf", summary.groupby
    return mean, frac


def top_variable_tfs(activity: pd.DataFrame, n_top: int = 5, var_cutoff: float = 0.5) -> pd.DataFrame:
    """Upstream's ``get_top_tfs``: per group, the ``n_top`` TFs of highest z-score among the most variable.

    Rows are ranked by variance across groups (ddof 1, ties in row order) and the first
    ``int(len(activity) * var_cutoff)`` kept; each is z-scored across groups (ddof 1); each group lists
    its ``n_top`` highest (ties: the more variable TF first). TFs constant across groups have no z-score
    and are never listed. Returns one column per group, rows ranked from 1.
    """
    check_top(n_top, "--top")
    if not 0 < var_cutoff <= 1:
        raise UserError(f"must be in (0, 1], got {var_cutoff}", "--var-cutoff")
    if activity.shape[1] < 2:
        raise UserError(f"the variance across groups needs at least 2 groups, got {activity.shape[1]}", "--groupby")
    keep = int(len(activity) * var_cutoff)
    if keep < 1:
        raise UserError(f"keeps int({len(activity)} x {var_cutoff}) = 0 TFs; raise it", "--var-cutoff")
    values = activity.to_numpy(dtype=np.float64)
    var = values.var(axis=1, ddof=1)
    rows = top_order(var, keep)
    kept = values[rows]
    sd = kept.std(axis=1, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (kept - kept.mean(axis=1, keepdims=True)) / sd[:, None]
    finite = np.isfinite(z).all(axis=1)
    n = min(n_top, int(finite.sum()))
    names = activity.index.to_numpy()[rows]
    out = {}
    for j, group in enumerate(activity.columns):
        score = np.where(finite, z[:, j], -np.inf)
        out[group] = names[top_order(score, n)]
    table = pd.DataFrame(out, index=pd.RangeIndex(1, n + 1, name="rank"))
    table.columns.name = activity.columns.name
    return table


def zscore_rows(matrix: pd.DataFrame) -> pd.DataFrame:
    """Each row z-scored across columns (ddof 1, as ``get_top_tfs``); constant rows become 0."""
    values = matrix.to_numpy(dtype=np.float64)
    sd = values.std(axis=1, ddof=1, keepdims=True) if values.shape[1] > 1 else np.zeros((len(values), 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(sd > 0, (values - values.mean(axis=1, keepdims=True)) / sd, 0.0)
    return pd.DataFrame(z, index=matrix.index, columns=matrix.columns)


# --------------------------------------------------------------------------------------------- output

def check_table_output(out: str | Path, overwrite: bool, inputs: Iterable[Path] = ()) -> None:
    """Validate a table output path (``-`` = stdout) before any work."""
    if str(out) == "-":
        return
    table_separator(out)
    check_output_path(Path(out), overwrite, inputs)


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
