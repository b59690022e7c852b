"""``variants``: what genetic variants (SNVs) do to the genes a set of models predicts.

The variants (VCF or a table) are placed in the windows of the modelled genes' peaks (the stored sequences on
the genome, :mod:`cell2net_attr.data.peak_windows`); each that lands in a window with its REF base stored there
is scored: the rate of every selected cell with the reference and with the alternative base, summed per group
(``--groupby``), or kept per cell (``.h5ad``). The data file is opened, hashed and read once for every group
of genes, as ``run-many`` does; a gene whose output already holds this run is skipped, another run's output is
refused; SLURM arrays shard the genes. Records that cannot be scored are named on stderr with their reason,
and listed in the report.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .._version import __version__
from ..data.covariates import parse_covariates
from ..data.job_index import DataIndex
from ..data.obs_groups import ObsGroups, read_obs_groups
from ..data.peak_windows import WindowIndex, chrom_naming_hint, peak_windows
from ..data.selection import read_tokens
from ..data.variants import SKIP_COLUMNS, read_variants
from ..engines.predict import UPSTREAM_BATCH
from ..engines.registry import make_predictor
from ..errors import UserError
from ..io.schema import PredictionIdentity, canonical_options
from ..io.variants_io import TABLE_FORMATS, VariantCellsWriter, variant_table, write_variant_table
from ..io.writers import atomic_output
from ..model.checkpoint import load_checkpoint
from ..model.device import resolve_device
from .binding import AttributionModel, bind
from .gene_groups import GROUP_GENES, REPORT, GeneOutcome, make_out_dir, open_data, recorded, run_gene_group
from .gene_job import Selection
from .lifecycle import existing_output
from .mutagenesis import check_predictor
from .options import JobOptions, check_batching
from .progress import Progress
from .shards import Shard
from .stream import JOB_READ_ROWS, Blocks
from .threads import set_threads

VARIANT_FORMATS = (*TABLE_FORMATS, "h5ad")
#: Records named on stderr before the rest are only counted (all are in the report).
SHOWN_SKIPS = 20
#: Records outside every window kept for the report; beyond, they are only counted (a genome's VCF has millions).
LISTED_OUTSIDE = 1000


@dataclass
class VariantOptions(JobOptions):
    """Everything ``cell2net-attr variants`` takes besides the models and the data."""

    variants: Path | None = None
    groupby: str | None = None
    report: Path | None = None
    fmt: str = "tsv"


@dataclass(frozen=True)
class PlacedVariants:
    """The variant-gene pairs to score (one row per variant, gene and peak) and the records skipped."""

    pairs: pd.DataFrame  # variant, gene, peak, offset, ref, alt (+ chrom, pos, line)
    skipped: pd.DataFrame  # SKIP_COLUMNS
    n_records: int
    n_outside: int  # records outside every window, listed or not


def place_variants(path: Path, index: DataIndex, genes: list[str], atac_mod: str) -> PlacedVariants:
    """Read ``path`` and place its SNVs in the peak windows of ``genes``."""
    windows = _windows(index, genes, atac_mod)
    listed = [0]

    def keep(chrom, start, end):  # records in a window, and the first few outside (for the report)
        inside = windows.overlaps(chrom, start, end)
        room = max(0, LISTED_OUTSIDE - listed[0])
        outside = np.flatnonzero(~inside)[:room]
        listed[0] += len(outside)
        inside[outside] = True
        return inside

    found = read_variants(path, keep=keep)
    placed = windows.place(found.snvs)
    pairs = placed.hits.drop(columns=["variant"]).rename(columns={"id": "variant"})
    pairs = pairs[["variant", "gene", "peak", "offset", "ref", "alt", "chrom", "pos", "line"]]
    skipped = pd.concat([found.skipped, placed.skipped], ignore_index=True).sort_values("line", kind="stable")
    n_outside = int((placed.skipped["kind"] == "outside").sum()) + found.n_dropped
    if not len(pairs):
        hint = chrom_naming_hint(found.chroms_seen, windows.chroms) or ""
        raise UserError(f"none of its {found.n_records} records could be scored ({n_outside} outside every modelled "
                        f"peak window, {len(skipped) - int((skipped['kind'] == 'outside').sum())} refused)"
                        f"{'; ' + hint if hint else ''}", path)
    return PlacedVariants(pairs.reset_index(drop=True), skipped.reset_index(drop=True), found.n_records, n_outside)


def _windows(index: DataIndex, genes: list[str], atac_mod: str) -> WindowIndex:
    """The windows of the genes' peaks: ``atac.uns["peaks"]`` start/end when it has them, else the name rule."""
    p2g = index.peak_to_gene
    rows = [r for g in genes if (r := p2g.rows(g)) is not None]
    gene_peaks = p2g.table.iloc[np.concatenate(rows) if rows else []][["gene", "peak"]].astype(str)
    peaks = list(dict.fromkeys(gene_peaks["peak"]))
    table = index.store.read(f"mod/{atac_mod}/uns/peaks") if index.store.has(f"mod/{atac_mod}/uns/peaks") else None
    seqs = index.sequences(atac_mod)
    if seqs is None:
        raise UserError(f"no peak sequences in {atac_mod}.uns['peaks']: variants need them", index.source)
    coords = {}
    if isinstance(table, pd.DataFrame) and {"start", "end"} <= set(table.columns):
        at = table.index.astype(str)
        first = table[~at.duplicated()].set_axis(at[~at.duplicated()]).loc[peaks]
        coords = {"start": first["start"].tolist(), "end": first["end"].tolist()}
        if "chr" in first.columns:
            coords["chrom"] = first["chr"].astype(str).tolist()
    windows = peak_windows(peaks, seqs[0].loc[peaks].tolist(), source=index.source, **coords)
    return WindowIndex(windows, gene_peaks, source=index.source)


@dataclass
class VariantSpec:
    """What the driver needs of a group's jobs: the rows and how many are read at once."""

    rows: np.ndarray
    blocks: Blocks


def job_spec(rows: np.ndarray, batch_size: int) -> VariantSpec:
    """The rows of a job, read in blocks of :data:`JOB_READ_ROWS` (at least ``batch_size``)."""
    return VariantSpec(rows, Blocks(max(batch_size, JOB_READ_ROWS), batch_size))


class VariantJob:
    """One gene's variant-gene pairs scored over the selected cells, per group (and per cell for ``.h5ad``)."""

    def __init__(self, model: AttributionModel, pairs: pd.DataFrame, spec: VariantSpec, groups: ObsGroups | None,
                 engine: str, out: Path, fmt: str, attrs: dict, obs: pd.DataFrame | None,
                 locking: bool | None) -> None:
        self.model, self.pairs, self.spec, self.fmt, self.attrs = model, pairs, spec, fmt, attrs
        self.failed, self.seconds, self.done_before, self.checkpoint = None, 0.0, 0, None
        self.output = self.path = out
        self.groupby = groups.column if groups is not None else None
        self.labels = [str(g) for g in groups.order] if groups is not None else ["all cells"]
        self.codes = groups.codes[spec.rows] if groups is not None else np.zeros(len(spec.rows), dtype=np.int64)
        data, device = model.data, model.device
        self.engine = make_predictor(engine, model.module, torch.from_numpy(data.peak_seq).to(device),
                                     torch.from_numpy(data.peak_dist).to(device))
        peak_pos = {p: i for i, p in enumerate(data.peaks)}
        self.by_peak = [(peak_pos[p], np.flatnonzero(pairs["peak"].to_numpy() == p)) for p in pairs["peak"].unique()]
        self.bases = pairs["alt"].map("ACGT".index).to_numpy(dtype=np.int64)
        self.offsets = pairs["offset"].to_numpy(dtype=np.int64)
        g, v = len(self.labels), len(pairs)
        self.n, self.ref_sum, self.alt_sum = np.zeros(g, dtype=np.int64), np.zeros(g), np.zeros((g, v))
        self.cells = VariantCellsWriter(out, obs, pairs, attrs, locking) if fmt == "h5ad" else None

    @property
    def gene(self) -> str:
        """The gene."""
        return self.model.gene

    def accept(self, start: int, batch) -> None:
        """Score every pair in the cells of ``batch`` (output rows ``start..``)."""
        if isinstance(batch, UserError):
            raise batch
        t0 = time.monotonic()
        device = self.model.device
        inputs = [torch.from_numpy(x).to(device) for x in (batch.peak_acc, batch.tf_exp, batch.covariates)]
        ref = self.engine.reference_rates(*inputs).double().cpu().numpy()
        alt = np.empty((len(ref), len(self.pairs)))
        for peak, cols in self.by_peak:
            alt[:, cols] = self.engine.mutant_rates(peak, self.offsets[cols], self.bases[cols],
                                                    *inputs).double().cpu().numpy()
        codes = self.codes[start : start + len(ref)]
        kept = codes >= 0
        np.add.at(self.n, codes[kept], 1)
        np.add.at(self.ref_sum, codes[kept], ref[kept])
        np.add.at(self.alt_sum, codes[kept], alt[kept])
        if self.cells is not None:
            self.cells.write_cells(start, ref.astype(np.float32), alt.astype(np.float32))
        self.seconds += time.monotonic() - t0

    def table(self) -> pd.DataFrame:
        """The effects per pair and group (:func:`~cell2net_attr.io.variants_io.variant_table`)."""
        return variant_table(self.pairs, self.labels, self.groupby, self.n, self.ref_sum, self.alt_sum)

    def write_output(self) -> None:
        """The table (or the per-cell file), renamed into place."""
        if self.cells is not None:
            self.cells.commit()
            return
        write_variant_table(self.output, self.table(), self.fmt, self.attrs)

    @property
    def resumable(self) -> bool:
        """Whether it writes a file (an interrupt then says how to continue)."""
        return self.output is not None

    def save(self) -> int:
        """Nothing is resumable within a gene: it is computed again."""
        return 0

    def discard(self) -> None:
        """Remove the per-cell file in progress."""
        if self.cells is not None:
            self.cells.abort()

    def resume_note(self, saved: int) -> str:
        """How to continue."""
        return "rerun the same command: finished genes are skipped"


def variants_identity(model: AttributionModel, pairs: pd.DataFrame, selection: Selection, data_sha256: str,
                      engine: str, fmt: str, groupby: str | None) -> PredictionIdentity:
    """What a gene's variants output must match to count as this run's: the pairs scored included."""
    digest = hashlib.sha256(pairs[["variant", "peak", "offset", "ref", "alt"]].to_csv(index=False).encode())
    return PredictionIdentity(kind="variants", gene=model.gene, engine=engine, format=fmt,
                              covariates=",".join(model.covariates),
                              checkpoint_sha256=model.checkpoint.sha256 if model.checkpoint else "",
                              data_sha256=data_sha256, selection_sha256=selection.digest,
                              n_rows_total=len(selection.rows), groupby=groupby or "",
                              options=canonical_options({"pairs_sha256": digest.hexdigest(),
                                                         "n_pairs": len(pairs)}))


def run_variants(checkpoints: list[Path], data: Path, out_dir: Path, opts: VariantOptions,
                 on_gene: Callable[[int, int, GeneOutcome], None] | None = None, shard: Shard | None = None,
                 progress: Progress | None = None,
                 on_skip: Callable[[PlacedVariants], None] | None = None) -> list[GeneOutcome]:
    """Score the variants of ``opts.variants`` with every checkpoint into ``out_dir/<gene>.variants.<fmt>``.

    The skipped records go to ``opts.report`` (default ``out_dir/variants-skipped.tsv``) and to ``on_skip``;
    one outcome per gene; ``run-report.tsv`` as ``run-many`` writes it.
    """
    report = out_dir / REPORT
    if shard is not None and shard.count > 1:
        start, stop = shard.bounds(len(checkpoints))
        checkpoints, report = checkpoints[start:stop], shard.path(report)
    if opts.fmt not in VARIANT_FORMATS:
        raise UserError(f"unknown format '{opts.fmt}', choose from {', '.join(VARIANT_FORMATS)}", param="fmt")
    if opts.variants is None:
        raise UserError("is required: the VCF or table of variants", param="variants")
    check_predictor(opts.engine)
    batch = opts.batch_size if opts.batch_size is not None else UPSTREAM_BATCH
    check_batching(batch, opts.num_workers)
    set_threads(opts.threads)
    device = resolve_device(opts.device)
    covariates = parse_covariates(opts.covariates)
    tokens = read_tokens(opts.idx) if opts.idx is not None else None
    store = open_data(data, checkpoints, opts.hdf5_locking)
    try:
        index = DataIndex(store)
        placed = place_variants(Path(opts.variants), index, [ck.stem for ck in checkpoints], opts.atac_mod)
        make_out_dir(out_dir)  # once the variants are placed: a bad file leaves nothing behind
        _write_skipped(opts.report or out_dir / "variants-skipped.tsv", placed.skipped)
        if on_skip is not None:
            on_skip(placed)
        with recorded(report, len(checkpoints), on_gene) as (outcomes, record):
            selection = Selection.resolve(index, tokens, opts.idx_type, opts.where)
            groups = read_obs_groups(store, opts.groupby) if opts.groupby else None
            spec = job_spec(selection.rows, batch)
            opener = partial(_open_gene, pairs=placed.pairs, index=index, selection=selection, spec=spec,
                             groups=groups, device=device, covariates=covariates, opts=opts)
            for a in range(0, len(checkpoints), GROUP_GENES):
                run_gene_group(checkpoints[a : a + GROUP_GENES],
                               lambda ck: out_dir / f"{ck.stem}.variants.{opts.fmt}", opener, record,
                               opts.num_workers, progress)
    finally:
        store.close()
    return outcomes


def _open_gene(ck: Path, out: Path, *, pairs: pd.DataFrame, index: DataIndex, selection: Selection,
               spec: VariantSpec, groups: ObsGroups | None, device, covariates: list[str],
               opts: VariantOptions) -> VariantJob | None:
    """The gene's job, or None when its output already holds this run."""
    model = bind(load_checkpoint(ck), index, covariates, device, opts.rna_mod, opts.atac_mod)
    mine = pairs[pairs["gene"] == model.gene].reset_index(drop=True)
    identity = variants_identity(model, mine, selection, index.sha256, opts.engine, opts.fmt, opts.groupby)
    if not opts.overwrite and existing_output(out, identity):
        return None
    attrs = {**identity.attrs(), "tool": "cell2net-attr", "tool_version": __version__, "device": str(device),
             "checkpoint": str(ck), "variants": str(opts.variants)}
    obs = model.data.obs_table(selection.rows) if opts.fmt == "h5ad" else None
    return VariantJob(model, mine, spec, groups, opts.engine, out, opts.fmt, attrs, obs, opts.hdf5_locking)


def _write_skipped(path: Path, skipped: pd.DataFrame) -> None:
    """The records that could not be scored, with their reasons, as a TSV (atomically)."""
    with atomic_output(Path(path)) as tmp:
        skipped.loc[:, list(SKIP_COLUMNS)].to_csv(tmp, sep="\t", index=False)
