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
from .errors import EXIT_INTERNAL, EXIT_USER, UserError

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
    except KeyboardInterrupt:
        _err("interrupted; no output was written")
        raise typer.Exit(130) from None
    except Terminated:
        _err("terminated (SIGTERM); no output was written")
        raise typer.Exit(143) from None
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


class Terminated(BaseException):
    """SIGTERM (scancel, preemption): unwinds like Ctrl-C so that partial outputs are removed."""


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


@app.command()
def run(
    checkpoint: Path = typer.Argument(..., help="Cell2Net checkpoint GENE.pt."),
    data: Path = typer.Argument(..., help="Per-gene GENE.h5mu or the full multi-gene .h5mu."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output .h5/.hdf5 or .npy [default: <gene>.tf_attr.h5]."),
    gene: Optional[str] = typer.Option(None, help="Gene name [default: checkpoint file stem]."),
    covariates: Optional[str] = typer.Option(None, help="Covariate obs columns in the model's order, 'a,b'."),
    idx: Optional[str] = typer.Option(None, help="Cells: '0,5,9', '0:100', '-1', obs names, or @FILE (@- = stdin)."),
    idx_type: str = typer.Option("auto", help="How to read --idx tokens: auto, position or name."),
    n_steps: int = typer.Option(100, help="Integration steps."),
    method: str = typer.Option("gausslegendre", help="gausslegendre, riemann_left|right|middle|trapezoid, or exact."),
    multiply_by_inputs: bool = typer.Option(True, "--multiply-by-inputs/--no-multiply-by-inputs",
                                            help="Multiply integrated gradients by the input (global attribution)."),
    engine: str = typer.Option("fast", help="fast, or captum (the reference, as upstream runs it)."),
    module_mode: str = typer.Option("eval", help="eval (upstream 0.13), or train (stochastic; captum engine only)."),
    seed: Optional[int] = typer.Option(None, help="Random seed for --module-mode train."),
    batch_size: Optional[int] = typer.Option(None, help="Cells per batch [default: 256 fast, 4 captum]."),
    num_workers: int = typer.Option(1, help="Background threads reading batches ahead (0 = none)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    threads: Optional[int] = typer.Option(None, help="Torch CPU threads [default: $SLURM_CPUS_PER_TASK if set]."),
    delta: bool = typer.Option(False, "--delta", help="Also store the per-cell convergence delta (HDF5)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    rna_mod: str = typer.Option("rna", help="RNA modality name."),
    atac_mod: str = typer.Option("atac", help="ATAC modality name."),
    hdf5_locking: Optional[bool] = typer.Option(None, "--hdf5-locking/--no-hdf5-locking",
                                                help="HDF5 file locking (turn off on network file systems)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no summary."),
) -> None:
    """Compute TF attributions for one checkpoint and write them to --out."""
    from .runner import RunOptions, run_one

    with _reported():
        _threads(threads)
        opts = RunOptions(out=out, gene=gene, covariates=covariates, idx=idx, idx_type=idx_type, n_steps=n_steps,
                          method=method, multiply_by_inputs=multiply_by_inputs, engine=engine,
                          module_mode=module_mode, seed=seed, batch_size=batch_size, num_workers=num_workers,
                          device=device, delta=delta, overwrite=overwrite, rna_mod=rna_mod, atac_mod=atac_mod,
                          hdf5_locking=hdf5_locking, quiet=quiet)
        t0 = time.monotonic()
        result = run_one(checkpoint, data, opts)
        if not quiet:
            secs = time.monotonic() - t0
            _err(f"{result.gene}: {result.n_cells} cells x {result.n_tfs} TFs in {secs:.2f}s "
                 f"({result.n_cells / max(secs, 1e-9):.1f} cells/s, {result.engine} engine on {result.device}) "
                 f"-> {result.path}")


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
