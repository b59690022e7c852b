"""The ``cell2net-attr`` command line: parse, call the library, report on stderr.

Exit codes: 0 success, 1 internal error, 2 bad input (file, flag or index), 130 interrupted
(SIGINT), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import typer

from . import __version__
from .errors import EXIT_INTERNAL, EXIT_USER, Terminated, UserError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Integrated-Gradients TF attributions for Cell2Net models.")

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cell2net-attr {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    _state["debug"] = debug


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _reported() -> Iterator[None]:
    """Turn exceptions into one-line messages and exit codes (tracebacks only with --debug)."""
    shown = warnings.showwarning
    warnings.showwarning = lambda message, *args, **kw: _err(f"warning: {message}")
    previous = _on_sigterm()
    try:
        yield
    except UserError as exc:
        if _state["debug"]:
            raise
        _err(f"error: {exc}")
        raise typer.Exit(EXIT_USER) from None
    except (KeyboardInterrupt, Terminated) as exc:
        sigterm = isinstance(exc, Terminated)
        hint = getattr(exc, "resume_hint", None)
        _err(f"{'terminated (SIGTERM)' if sigterm else 'interrupted'}; nothing was written at the output path"
             + (f"; {hint}" if hint else ""))
        raise typer.Exit(143 if sigterm else 130) from None
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        if _state["debug"]:
            raise
        _err(f"internal error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
             f" (rerun with --debug for a traceback)")
        raise typer.Exit(EXIT_INTERNAL) from None
    finally:
        warnings.showwarning = shown
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _on_sigterm():
    """Turn SIGTERM into :class:`Terminated` in the main thread; returns the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise Terminated()

    return signal.signal(signal.SIGTERM, handler)


def _threads(threads: Optional[int]) -> None:
    import torch

    if threads is None and os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        threads = int(os.environ["SLURM_CPUS_PER_TASK"])
    if threads is not None:
        if threads < 1:
            raise UserError(f"must be >= 1, got {threads}", "--threads")
        torch.set_num_threads(threads)


# Options shared by `run` and `run-many` (defined once; each command lists the ones it takes).
OPT = {
    "covariates": typer.Option(None, help="Covariate obs columns in the model's order, 'a,b'."),
    "idx": typer.Option(None, help="Cells: '0,5,9', '0:100', '-1', obs names, or @FILE (@- = stdin)."),
    "idx_type": typer.Option("auto", help="How to read --idx tokens: auto, position or name."),
    "n_steps": typer.Option(100, help="Integration steps."),
    "method": typer.Option("gausslegendre", help="gausslegendre, riemann_left|right|middle|trapezoid, or exact."),
    "multiply_by_inputs": typer.Option(True, "--multiply-by-inputs/--no-multiply-by-inputs",
                                       help="Multiply integrated gradients by the input (global attribution)."),
    "engine": typer.Option("fast", help="fast, or captum (the reference, as upstream runs it)."),
    "module_mode": typer.Option("eval", help="eval (upstream 0.13), or train (stochastic; captum engine only)."),
    "seed": typer.Option(None, help="Random seed for --module-mode train."),
    "batch_size": typer.Option(None, help="Cells per batch [default: 256 fast, 4 captum]."),
    "num_workers": typer.Option(1, help="Background threads reading batches ahead (0 = none)."),
    "device": typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    "threads": typer.Option(None, help="Torch CPU threads [default: $SLURM_CPUS_PER_TASK if set]."),
    "delta": typer.Option(False, "--delta", help="Also store the per-cell convergence delta (HDF5)."),
    "overwrite": typer.Option(False, "--overwrite", help="Replace existing output."),
    "rna_mod": typer.Option("rna", help="RNA modality name."),
    "atac_mod": typer.Option("atac", help="ATAC modality name."),
    "hdf5_locking": typer.Option(None, "--hdf5-locking/--no-hdf5-locking",
                                 help="HDF5 file locking (turn off on network file systems)."),
    "quiet": typer.Option(False, "--quiet", "-q", help="No progress and no summary."),
    "resume": typer.Option(False, "--resume", help="Continue an interrupted run from its last saved chunk."),
    "shard": typer.Option(None, help="K/N: compute contiguous part K (0-based) of N "
                                     "[default: from SLURM_ARRAY_TASK_* in a job array]."),
}


@app.command()
def run(
    checkpoint: Path = typer.Argument(..., help="Cell2Net checkpoint GENE.pt."),
    data: Path = typer.Argument(..., help="Per-gene GENE.h5mu or the full multi-gene .h5mu."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output .h5/.hdf5 or .npy [default: <gene>.tf_attr.h5]."),
    gene: Optional[str] = typer.Option(None, help="Gene name [default: checkpoint file stem]."),
    covariates: Optional[str] = OPT["covariates"],
    idx: Optional[str] = OPT["idx"],
    idx_type: str = OPT["idx_type"],
    n_steps: int = OPT["n_steps"],
    method: str = OPT["method"],
    multiply_by_inputs: bool = OPT["multiply_by_inputs"],
    engine: str = OPT["engine"],
    module_mode: str = OPT["module_mode"],
    seed: Optional[int] = OPT["seed"],
    batch_size: Optional[int] = OPT["batch_size"],
    num_workers: int = OPT["num_workers"],
    device: str = OPT["device"],
    threads: Optional[int] = OPT["threads"],
    delta: bool = OPT["delta"],
    overwrite: bool = OPT["overwrite"],
    rna_mod: str = OPT["rna_mod"],
    atac_mod: str = OPT["atac_mod"],
    hdf5_locking: Optional[bool] = OPT["hdf5_locking"],
    quiet: bool = OPT["quiet"],
    resume: bool = OPT["resume"],
    shard: Optional[str] = OPT["shard"],
) -> None:
    """Compute TF attributions for one checkpoint and write them to --out."""
    from .runner import RunOptions, run_one
    from .sharding import resolve_shard

    with _reported():
        _threads(threads)
        opts = RunOptions(**{k: v for k, v in locals().items() if k in RunOptions.__dataclass_fields__})
        t0 = time.monotonic()
        result = run_one(checkpoint, data, opts, shard=resolve_shard(shard))
        if not quiet:
            secs = time.monotonic() - t0
            _err(f"{result.gene}: {result.n_cells} cells x {result.n_tfs} TFs in {secs:.2f}s "
                 f"({result.n_cells / max(secs, 1e-9):.1f} cells/s, {result.engine} engine on {result.device}) "
                 f"-> {result.path}")


@app.command("run-many")
def run_many(
    models: list[str] = typer.Argument(..., help="Checkpoint directories (*.pt), checkpoints, or @FILE lists."),
    data: Path = typer.Argument(..., help="The full multi-gene .h5mu (read once for all genes)."),
    out_dir: Path = typer.Option(..., "--out-dir", help="Directory for <gene>.h5 (or .npy) and run-report.tsv."),
    fmt: str = typer.Option("h5", "--format", help="h5 or npy."),
    covariates: Optional[str] = OPT["covariates"],
    idx: Optional[str] = OPT["idx"],
    idx_type: str = OPT["idx_type"],
    n_steps: int = OPT["n_steps"],
    method: str = OPT["method"],
    multiply_by_inputs: bool = OPT["multiply_by_inputs"],
    engine: str = OPT["engine"],
    module_mode: str = OPT["module_mode"],
    seed: Optional[int] = OPT["seed"],
    batch_size: Optional[int] = OPT["batch_size"],
    num_workers: int = OPT["num_workers"],
    device: str = OPT["device"],
    threads: Optional[int] = OPT["threads"],
    delta: bool = OPT["delta"],
    overwrite: bool = OPT["overwrite"],
    rna_mod: str = OPT["rna_mod"],
    atac_mod: str = OPT["atac_mod"],
    hdf5_locking: Optional[bool] = OPT["hdf5_locking"],
    quiet: bool = OPT["quiet"],
    resume: bool = OPT["resume"],
    shard: Optional[str] = OPT["shard"],
) -> None:
    """Attributions for many genes: one output per checkpoint, finished genes skipped, failures reported."""
    from .multigene import collect_checkpoints
    from .multigene import run_many as run_genes
    from .runner import RunOptions
    from .sharding import resolve_shard

    with _reported():
        _threads(threads)
        opts = RunOptions(**{k: v for k, v in locals().items() if k in RunOptions.__dataclass_fields__})
        checkpoints = collect_checkpoints(models)

        def report(i: int, n: int, o) -> None:
            if not quiet or o.status == "failed":
                detail = f": {o.error}" if o.error else f" -> {o.output}" if o.status == "done" else ""
                _err(f"[{i + 1}/{n}] {o.gene} {o.status}{detail}")

        outcomes = run_genes(checkpoints, data, out_dir, fmt, opts, report, resolve_shard(shard))
        counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
        if not quiet or counts["failed"]:
            _err(f"{len(outcomes)} genes: {counts['done']} done, {counts['skipped']} skipped, "
                 f"{counts['failed']} failed; report in {out_dir}")
        if counts["failed"]:
            internal = any(o.error.startswith("internal error") for o in outcomes)
            raise typer.Exit(EXIT_INTERNAL if internal else EXIT_USER)


@app.command()
def merge(
    shards: list[Path] = typer.Argument(..., help="HDF5 shard outputs of one run (any order)."),
    out: Path = typer.Option(..., "--out", "-o", help="Merged .h5 output."),
    overwrite: bool = OPT["overwrite"],
    quiet: bool = OPT["quiet"],
) -> None:
    """Join shard outputs after checking all are present, complete and from the same run."""
    from .merge import merge as merge_shards

    with _reported():
        n = merge_shards(shards, out, overwrite)
        if not quiet:
            _err(f"merged {len(shards)} shards, {n} cells -> {out}")


@app.command()
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
    from .inspection import describe

    with _reported():
        report = describe(checkpoint, data, gene, covariates, rna_mod, atac_mod)
        if as_json:
            typer.echo(json.dumps(report, indent=2))
        else:
            for key, value in report.items():
                typer.echo(f"{key:>20}: {value}")
        if report.get("match") is False:
            raise typer.Exit(EXIT_USER)


def main() -> None:
    """Console-script entry point."""
    app()
from . import cli_downstream  # noqa: E402,F401  (registers summarize, activity, plot)
