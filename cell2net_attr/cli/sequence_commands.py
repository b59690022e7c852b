"""The commands of predicted rates for base changes: ``mutagenesis`` (which bases of a peak drive a gene) and
``variants`` (what genetic variants do to it). Parse, call the pipeline, report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ..engines.ism_effect import N_RULES
from ..engines.registry import PREDICTORS
from .common import (
    JOB_OPTIONS,
    choices,
    err,
    finish_genes,
    gene_reporter,
    plain,
    reported,
    run_options,
    shared_options,
)

Predictor = choices("Predictor", PREDICTORS)
NRule = choices("NRule", N_RULES)
VariantFormat = choices("VariantFormat", ("tsv", "csv", "h5ad"))

MUTAGENESIS_HELP = (
    "Saturation mutagenesis of a gene's peaks (upstream saturation_mutagenesis): for each position and each "
    "base other than the stored one, the rate over the cells; the effect is mean(pred_ref) - mean(pred_alt) "
    "(--logfc: log2 of their ratio), smoothed over --window-size positions, with --multiply-by-inputs kept in "
    "the stored base's row.\n\n"
    "Output by suffix: .npy is upstream's (4, L) array (one peak, no --groupby; --return-seq also writes "
    "<stem>.seq.npy); .h5/.h5ad hold peaks x positions x bases for every group, with the mean rates, the "
    "reference sequences and the run's parameters. Finished peaks are saved: --resume continues at the next."
)


@shared_options(*JOB_OPTIONS)
def mutagenesis(
    checkpoint: Path = typer.Argument(..., help="Cell2Net checkpoint GENE.pt."),
    data: Path = typer.Argument(..., help="Per-gene GENE.h5mu or the full multi-gene .h5mu."),
    peak: Optional[list[str]] = typer.Option(None, "--peak", show_default="every peak",
                                             help="A peak: its name or position (0-based); repeat for more."),
    peaks: Optional[str] = typer.Option(None, "--peaks", help="'all': every peak of the gene."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", show_default="<gene>.mutagenesis.h5",
                                       help="Output .h5/.hdf5, .h5ad (AnnData) or .npy (upstream's array)."),
    gene: Optional[str] = typer.Option(None, show_default="the checkpoint's file stem", help="Gene name."),
    groupby: Optional[str] = typer.Option(None, "--groupby", show_default="one group of all selected cells",
                                          help="obs column: the effects within each group (NaN values left out)."),
    engine: Predictor = typer.Option("fast", help="fast, or reference (the whole module per cell and mutant, "
                                                  "as upstream's predict: slow)."),
    batch_size: int = typer.Option(32, min=1, help="Cells per forward pass of the reference engine (upstream's); "
                                                   "the fast engine reads blocks of its own size, at least this."),
    multiply_by_inputs: bool = typer.Option(True, "--multiply-by-inputs/--no-multiply-by-inputs",
                                            help="Keep each position's effect in its stored base's row only."),
    logfc: bool = typer.Option(False, "--logfc/--no-logfc", help="log2(mean(pred_ref) / mean(pred_alt))."),
    smoothing: bool = typer.Option(True, "--smoothing/--no-smoothing", help="Moving average over positions."),
    window_size: int = typer.Option(3, min=1, help="Positions of the moving average."),
    return_seq: bool = typer.Option(False, "--return-seq", help="With .npy, also write the one-hot reference "
                                                                "(<stem>.seq.npy); .h5/.h5ad always hold it."),
    n_rule: NRule = typer.Option("upstream", help="At N bases: upstream divides the four predictions by 3 (the "
                                                  "default, to match it); mean divides by 4 (README)."),
    **opts,
) -> None:
    """Which bases of a gene's peaks drive it (see ``MUTAGENESIS_HELP``)."""
    from ..errors import UserError
    from ..pipeline.mutagenesis import MutagenesisOptions, run_mutagenesis

    with reported():
        if peak and peaks:
            raise UserError("give either --peak (one or more) or --peaks all", param="peaks")
        if peaks is not None and peaks != "all":
            raise UserError(f"expected 'all', got {peaks!r} (one peak: --peak NAME)", param="peaks")
        t0 = time.monotonic()
        options = run_options(opts, MutagenesisOptions, out=out, gene=gene, groupby=groupby, engine=plain(engine),
                              batch_size=batch_size, multiply_by_inputs=multiply_by_inputs, logfc=logfc,
                              smoothing=smoothing, window_size=window_size, return_seq=return_seq,
                              n_rule=plain(n_rule), peaks=list(peak) if peak else None)
        result = run_mutagenesis(checkpoint, data, options)
        if not opts["quiet"]:
            secs = time.monotonic() - t0
            err(f"{result.gene}: {result.n_peaks} peak(s) x {result.n_cells} cells, {result.n_groups} group(s) in "
                f"{secs:.2f}s ({result.engine} engine on {result.device}) -> {result.path}")


VARIANTS_HELP = (
    "Score genetic variants with gene models: every SNV of FILE (VCF, .vcf.gz, or a table with columns chrom "
    "pos ref alt [id], pos 1-based) that falls in a modelled gene's peak window, with its REF stored there, gets "
    "the rate of every selected cell with the reference and with the alternative base.\n\n"
    "Per gene, OUT_DIR/<gene>.variants.tsv (or .csv): variant, gene, peak, offset, ref, alt, [group], n_cells, "
    "mean_ref, mean_alt, delta (mean_alt - mean_ref), log2fc; or .h5ad: cells x variant-gene pairs (ID|GENE), "
    "X = alt - ref, layers ref and alt. Records that cannot be scored (REF not the stored base, indels, "
    "multi-allelic or symbolic ALTs, outside every window) are named on stderr and listed in --report. Genes "
    "whose output holds this run are skipped; SLURM arrays shard the genes."
)


@shared_options(*[o for o in JOB_OPTIONS if o != "resume"], "shard")
def variants(
    models: list[str] = typer.Argument(..., help="Checkpoint directories (*.pt), checkpoints, or @FILE lists."),
    data: Path = typer.Argument(..., help="The full multi-gene .h5mu (read once for all genes)."),
    variants_file: Path = typer.Option(..., "--variants", help="VCF (.vcf, .vcf.gz) or table (chrom pos ref alt "
                                                               "[id]; .tsv/.csv, gzip too)."),
    out_dir: Path = typer.Option(..., "--out-dir", help="Directory for <gene>.variants.<format> and the reports "
                                                        "(made when missing; its parent must exist)."),
    fmt: VariantFormat = typer.Option("tsv", "--format", help="tsv or csv (per group), h5ad (per cell)."),
    groupby: Optional[str] = typer.Option(None, "--groupby", show_default="one group of all selected cells",
                                          help="obs column: the table per group (NaN values left out)."),
    report: Optional[Path] = typer.Option(None, "--report", show_default="OUT_DIR/variants-skipped.tsv",
                                          help="Where the records that cannot be scored are listed, with reasons."),
    engine: Predictor = typer.Option("fast", help="fast, or reference (the whole module per cell and variant, "
                                                  "as upstream's predict: slow)."),
    batch_size: int = typer.Option(32, min=1, help="Cells per forward pass of the reference engine."),
    **opts,
) -> None:
    """What variants do to the modelled genes (see ``VARIANTS_HELP``)."""
    from ..pipeline.models import collect_checkpoints
    from ..pipeline.shards import resolve_shard
    from ..pipeline.variants import SHOWN_SKIPS, VariantOptions, run_variants

    with reported():
        quiet = opts["quiet"]
        checkpoints = collect_checkpoints(models)

        def skipped(placed) -> None:
            rows = placed.skipped
            for row in rows.head(SHOWN_SKIPS).itertuples():
                err(f"skipped {row.id} (line {row.line}): {row.reason}")
            unlisted = placed.n_outside - int((rows["kind"] == "outside").sum())
            if len(rows) > SHOWN_SKIPS or unlisted:
                more = f"{len(rows) - SHOWN_SKIPS} more listed in the report" if len(rows) > SHOWN_SKIPS else ""
                out = f"{unlisted} more outside every modelled peak window (counted only)" if unlisted else ""
                err(f"... and {'; '.join(x for x in (more, out) if x)}")
            if not quiet:
                err(f"{len(placed.pairs)} variant-gene-peak pairs to score from {placed.n_records} records; "
                    f"{len(rows) + unlisted} records not scored")

        options = run_options(opts, VariantOptions, variants=variants_file, groupby=groupby, report=report,
                              fmt=plain(fmt), engine=plain(engine), batch_size=batch_size)
        outcomes = run_variants(checkpoints, data, out_dir, options, gene_reporter(quiet),
                                resolve_shard(opts["shard"]), on_skip=skipped)
        finish_genes(outcomes, out_dir, quiet)
