"""The attribution commands: ``run``, ``run-many``, ``merge`` and ``inspect`` (parse, call the pipeline, report).

The pipeline (and so torch) is imported inside each command, so that ``--help`` stays light.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from ..errors import EXIT_USER
from ..io.schema import FEATURE_LABEL
from .common import (
    RUN_MANY_OPTIONS,
    RUN_OPTIONS,
    OutputFormat,
    err,
    finish_genes,
    gene_reporter,
    option,
    plain,
    reported,
    run_options,
    shared_options,
)


@shared_options(*RUN_OPTIONS)
def run(
    checkpoint: Path = typer.Argument(..., help="Cell2Net checkpoint GENE.pt."),
    data: Path = typer.Argument(..., help="Per-gene GENE.h5mu or the full multi-gene .h5mu."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", show_default="<gene>.tf_attr.h5, or <gene>.peak_attr.h5 with --target peaks",
                                       help="Output .h5/.hdf5, .h5ad (AnnData) or .npy."),
    gene: Optional[str] = typer.Option(None, show_default="the checkpoint's file stem", help="Gene name."),
    **opts,
) -> None:
    """Compute TF (or, with --target peaks, peak) attributions for one checkpoint and write them to --out."""
    from ..pipeline.run import run_one
    from ..pipeline.shards import resolve_shard

    with reported():
        t0 = time.monotonic()
        result = run_one(checkpoint, data, run_options(opts, out=out, gene=gene), shard=resolve_shard(opts["shard"]))
        if not opts["quiet"]:
            secs = time.monotonic() - t0
            what = FEATURE_LABEL[plain(opts["target"])]
            err(f"{result.gene}: {result.n_cells} cells x {result.n_features} {what}s in {secs:.2f}s "
                 f"({result.n_cells / max(secs, 1e-9):.1f} cells/s, {result.engine} engine on {result.device}) "
                 f"-> {result.path}")


@shared_options(*RUN_MANY_OPTIONS)
def run_many(
    models: list[str] = typer.Argument(..., help="Checkpoint directories (*.pt), checkpoints, or @FILE lists (one "
                                                 "checkpoint per line: a path relative to the list, or a gene "
                                                 "name found in the directories given)."),
    data: Path = typer.Argument(..., help="The full multi-gene .h5mu (read once for all genes)."),
    out_dir: Path = typer.Option(..., "--out-dir", help="Directory for <gene>.h5 (or .h5ad, .npy) and run-report.tsv "
                                                        "(made when missing; its parent must exist)."),
    fmt: OutputFormat = typer.Option("h5", "--format", help="Output format of every gene."),
    **opts,
) -> None:
    """Attributions for many genes: one output per checkpoint, finished genes skipped, failures reported.

    With --summary, also the table `summarize --groupby` would give, accumulated while computing (with
    --no-per-cell, the table alone).
    """
    from ..pipeline.models import collect_checkpoints
    from ..pipeline.run_many import run_many as run_genes
    from ..pipeline.shards import resolve_shard

    with reported():
        checkpoints = collect_checkpoints(models)
        outcomes = run_genes(checkpoints, data, out_dir, plain(fmt), run_options(opts), gene_reporter(opts["quiet"]),
                             resolve_shard(opts["shard"]), on_note=lambda note: err(f"note: {note}"))
        finish_genes(outcomes, out_dir, opts["quiet"])


def merge(
    shards: list[Path] = typer.Argument(..., help="Shard outputs (.h5/.h5ad) of one run, in any order; or the "
                                                  "summaries (.tsv/.csv/.h5ad) of a sharded run-many --summary."),
    out: Path = typer.Option(..., "--out", "-o", help="Merged output: .h5, .hdf5 or .h5ad (a summary: .tsv, .csv "
                                                      "or .h5ad)."),
    overwrite: bool = option("overwrite"),
    quiet: bool = option("quiet"),
) -> None:
    """Join shard outputs after checking all are present, complete and from the same run."""
    from ..pipeline.merge import merge as merge_shards
    from ..pipeline.summary_job import is_summary_file, merge_summaries

    with reported():
        if shards and all(is_summary_file(s) for s in shards):
            n = merge_summaries(shards, out, overwrite)
            if not quiet:
                err(f"merged {len(shards)} summary shards, {n} genes -> {out}")
            return
        n = merge_shards(shards, out, overwrite)
        if not quiet:
            err(f"merged {len(shards)} shards, {n} cells -> {out}")


def inspect(
    checkpoint: Path = typer.Argument(..., help="Cell2Net checkpoint GENE.pt."),
    data: Optional[Path] = typer.Argument(None, help="Optional .h5mu to check against the checkpoint."),
    gene: Optional[str] = typer.Option(None, help="Gene name [default: checkpoint file stem]."),
    covariates: Optional[str] = typer.Option(None, help="Covariate obs columns, 'a,b'."),
    rna_mod: str = typer.Option("rna", help="RNA modality name."),
    atac_mod: str = typer.Option("atac", help="ATAC modality name."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show a checkpoint's inferred architecture and, with data, whether they match."""
    from ..pipeline.inspect import describe

    with reported():
        report = describe(checkpoint, data, gene, covariates, rna_mod, atac_mod)
        if as_json:
            typer.echo(json.dumps(report, indent=2))
        else:
            for key, value in report.items():
                typer.echo(f"{key:>20}: {value}")
        if report.get("match") is False:
            raise typer.Exit(EXIT_USER)

