"""What every command shares: one-line error reporting, exit codes, signals, threads and shared options."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Optional

import typer

from ..errors import EXIT_INTERNAL, EXIT_USER, Terminated, UserError

state = {"debug": False}

#: Library parameters whose flag is not ``--`` + the name with dashes.
FLAGS = {"fmt": "--format", "out_dir": "--out-dir"}


def err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Turn exceptions into one-line messages and exit codes (tracebacks only with --debug)."""
    shown = warnings.showwarning
    warnings.showwarning = lambda message, *args, **kw: err(f"warning: {message}")
    previous = on_sigterm()
    try:
        yield
    except UserError as exc:
        if state["debug"]:
            raise
        err(f"error: {exc.describe(FLAGS)}")
        raise typer.Exit(EXIT_USER) from None
    except (KeyboardInterrupt, Terminated) as exc:
        sigterm = isinstance(exc, Terminated)
        hint = getattr(exc, "resume_hint", None)
        err(f"{'terminated (SIGTERM)' if sigterm else 'interrupted'}; nothing was written at the output path"
             + (f"; {hint}" if hint else ""))
        raise typer.Exit(143 if sigterm else 130) from None
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        if state["debug"]:
            raise
        err(f"internal error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
             f" (rerun with --debug for a traceback)")
        raise typer.Exit(EXIT_INTERNAL) from None
    finally:
        warnings.showwarning = shown
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def on_sigterm():
    """Turn SIGTERM into :class:`Terminated` in the main thread; returns the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise Terminated()

    return signal.signal(signal.SIGTERM, handler)


def set_threads(threads: Optional[int]) -> None:
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


