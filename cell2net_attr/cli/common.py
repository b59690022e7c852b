"""What every command shares: one-line error reporting, exit codes, signals, threads and shared options."""

from __future__ import annotations

import contextlib
import inspect
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from .._compat import click_context
from ..data.selection import IDX_TYPES
from ..engines.base import METHODS, MODULE_MODES, TARGETS
from ..engines.registry import ENGINES
from ..errors import EXIT_INTERNAL, EXIT_USER, Terminated, UserError, first_line
from ..io.schema import FORMAT_NAMES
from ..io.storage import COMPRESSIONS, DTYPES
from ..pipeline.options import RunOptions

#: Library parameters whose flag is not ``--`` + the name with dashes.
FLAGS = {"fmt": "--format", "out_dir": "--out-dir", "per_cell": "--no-per-cell"}


def err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def debugging() -> bool:
    """Whether ``--debug`` was given (kept in the root command's context object)."""
    ctx = click_context()
    obj = ctx.find_root().obj if ctx is not None else None
    return bool(isinstance(obj, dict) and obj.get("debug"))


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Turn exceptions into one-line messages and exit codes (tracebacks only with --debug)."""
    shown = warnings.showwarning
    warnings.showwarning = lambda message, *args, **kw: err(f"warning: {message}")
    previous = on_sigterm()
    try:
        yield
    except UserError as exc:
        if debugging():  # the whole chain of causes, then the same one line and exit code as without
            traceback.print_exc(file=sys.stderr)
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
        if debugging():
            raise
        err(f"internal error: {type(exc).__name__}: {first_line(exc)} (rerun with --debug for a traceback)")
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


def choices(name: str, values) -> type[Enum]:
    """A str Enum of ``values``, so that help lists them and shell completion offers them."""
    return Enum(name, {v: v for v in values}, type=str)


IdxType = choices("IdxType", IDX_TYPES)
Method = choices("Method", METHODS)
Engine = choices("Engine", ENGINES)
ModuleMode = choices("ModuleMode", MODULE_MODES)
OutputFormat = choices("OutputFormat", FORMAT_NAMES)
Target = choices("Target", TARGETS)
Dtype = choices("Dtype", DTYPES)
Compression = choices("Compression", COMPRESSIONS)


def plain(value):
    """An option's value for the library (a choice's text)."""
    return value.value if isinstance(value, Enum) else value


def run_options(opts: dict, cls: type = RunOptions, **more):
    """The pipeline's options (``cls``, a :class:`~cell2net_attr.pipeline.options.JobOptions`) from the parsed
    options (and ``more``); ``shard`` is not one of them."""
    values = {k: plain(v) for k, v in {**opts, **more}.items() if k != "shard"}
    return cls.from_mapping(values)


_D = RunOptions()  # every default below is RunOptions'

# Options shared by `run` and `run-many`: (type, option), defined once and given to both by `shared_options`.
OPT = {
    "covariates": (Optional[str], typer.Option(_D.covariates, help="Covariate obs columns in the model's order, "
                                                                   "'a,b'.")),
    "idx": (Optional[str], typer.Option(_D.idx, help="Cells: '0,5,9', '0:100', '-1', obs names, or @FILE "
                                                     "(@- = stdin).")),
    "target": (Target, typer.Option(_D.target, help="What to attribute: TF expression (upstream tf_attr) or peak "
                                                    "accessibility (upstream peak_attr).")),
    "where": (Optional[str], typer.Option(_D.where, help="Only cells whose obs row satisfies this comparison of "
                                                         "columns, e.g. \"celltype == 'Mono' and n_counts > 1000\" "
                                                         "(with --idx: both, in --idx order).")),
    "idx_type": (IdxType, typer.Option(_D.idx_type, help="How to read --idx tokens.")),
    "n_steps": (int, typer.Option(_D.n_steps, min=1, help="Integration steps.")),
    "method": (Method, typer.Option(_D.method, help="captum's quadrature, or exact (closed form, fast engine).")),
    "multiply_by_inputs": (bool, typer.Option(_D.multiply_by_inputs, "--multiply-by-inputs/--no-multiply-by-inputs",
                                              help="Multiply integrated gradients by the input (global attribution).")),
    "engine": (Engine, typer.Option(_D.engine, help="fast, or captum (the reference, as upstream runs it).")),
    "module_mode": (ModuleMode, typer.Option(_D.module_mode, help="eval (upstream 0.13), or train (stochastic; "
                                                                  "captum engine only).")),
    "seed": (Optional[int], typer.Option(_D.seed, help="Random seed for --module-mode train.")),
    "batch_size": (Optional[int], typer.Option(_D.batch_size, min=1, show_default="256 fast, 4 captum",
                                               help="Cells per batch handed to captum; the fast engine reads and "
                                                    "computes in blocks of its own size, at least this.")),
    "num_workers": (int, typer.Option(_D.num_workers, min=0, help="Background threads reading batches ahead "
                                                                  "(0 = none).")),
    "device": (str, typer.Option(_D.device, help="auto, cpu, cuda or cuda:N.")),
    "threads": (Optional[int], typer.Option(_D.threads, min=1, envvar="SLURM_CPUS_PER_TASK", show_envvar=True,
                                            show_default="the CPUs this process may use",
                                            help="Torch CPU threads (at most the CPUs this process may use; idle "
                                                 "threads sleep unless OMP_WAIT_POLICY says otherwise).")),
    "delta": (bool, typer.Option(_D.delta, "--delta", help="Also store the per-cell convergence delta (HDF5).")),
    "overwrite": (bool, typer.Option(_D.overwrite, "--overwrite", help="Replace existing output.")),
    "rna_mod": (str, typer.Option(_D.rna_mod, help="RNA modality name.")),
    "atac_mod": (str, typer.Option(_D.atac_mod, help="ATAC modality name.")),
    "hdf5_locking": (Optional[bool], typer.Option(_D.hdf5_locking, "--hdf5-locking/--no-hdf5-locking",
                                                  help="HDF5 file locking (turn off on network file systems).")),
    "chunk_rows": (Optional[int], typer.Option(_D.chunk_rows, min=1, envvar="CELL2NET_ATTR_CHUNK_ROWS",
                                               show_envvar=True, show_default="up to 16384, sized to memory",
                                               help="Cells per saved chunk (what --resume keeps after a kill).")),
    "quiet": (bool, typer.Option(_D.quiet, "--quiet", "-q", help="No progress and no summary.")),
    "dtype": (Dtype, typer.Option(_D.dtype, help="Type of the stored attributions: float16 halves the bytes "
                                                 "(read back as float32).")),
    "compression": (Compression, typer.Option(_D.compression, help="Compression of .h5/.hdf5/.h5ad outputs, "
                                                                   "chunked by rows (not for .npy).")),
    "resume": (bool, typer.Option(_D.resume, "--resume", help="Continue an interrupted run from its last saved "
                                                             "chunk.")),
    "shard": (Optional[str], typer.Option(None, show_default="from SLURM_ARRAY_TASK_* in a job array, else none",
                                          help="K/N: compute contiguous part K (0-based) of N.")),
    "summary": (Optional[Path], typer.Option(_D.summary, show_default="none",
                                             help="Also write the table `summarize` would give (.tsv, .csv, "
                                                  ".h5ad), accumulated while computing.")),
    "groupby": (Optional[str], typer.Option(_D.groupby, show_default="one group of all cells",
                                            help="obs column grouping the --summary (NaN values are left out).")),
    "top": (Optional[int], typer.Option(_D.top, min=1, show_default="all, file order",
                                        help="--summary keeps the N TFs (peaks) of largest mean per gene and group.")),
    "per_cell": (bool, typer.Option(_D.per_cell, "--per-cell/--no-per-cell",
                                    help="Write the per-cell files (--no-per-cell: the --summary alone).")),
}
#: What only `run-many` takes (the summary of many genes).
RUN_MANY_ONLY = ("summary", "groupby", "top", "per_cell")
#: What `run` takes; `run-many` takes every shared option.
RUN_OPTIONS = tuple(k for k in OPT if k not in RUN_MANY_ONLY)
RUN_MANY_OPTIONS = tuple(OPT)
#: What the commands of predicted rates (`mutagenesis`, `variants`) take of them.
JOB_OPTIONS = ("covariates", "idx", "where", "idx_type", "num_workers", "device", "threads", "overwrite",
               "rna_mod", "atac_mod", "hdf5_locking", "quiet", "resume")


def option(name: str):
    """The shared option ``name`` (for a command that takes only some of them)."""
    return OPT[name][1]


def shared_options(*names: str) -> Callable[[Callable], Callable]:
    """Give a command ``def cmd(own params..., **opts)`` the shared options ``names`` as typed parameters."""
    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=OPT[n][1], annotation=OPT[n][0])
                 for n in names]
        fn.__signature__ = sig.replace(parameters=own + extra)
        return fn
    return wrap


def gene_reporter(quiet: bool) -> Callable[[int, int, object], None]:
    """What a job over many genes prints per gene (``[i/n] GENE status``): failures always, the rest unless
    ``quiet``."""
    from ..pipeline.gene_groups import Outcome

    def report(i: int, n: int, o) -> None:
        if not quiet or o.kind.failed:
            detail = f": {o.error}" if o.error else f" -> {o.output}" if o.kind is Outcome.DONE else ""
            err(f"[{i + 1}/{n}] {o.gene} {o.kind.status}{detail}")
    return report


def finish_genes(outcomes: list, out_dir: Path, quiet: bool) -> None:
    """The closing line of a job over many genes, and its exit code: 2 if a gene failed on its input, 1 if on
    a bug."""
    from ..pipeline.gene_groups import Outcome

    counts = {s: sum(o.kind.status == s for o in outcomes) for s in ("done", "skipped", "busy", "failed")}
    if not quiet or counts["failed"]:
        busy = f", {counts['busy']} left to another run" if counts["busy"] else ""
        err(f"{len(outcomes)} genes: {counts['done']} done, {counts['skipped']} skipped{busy}, "
            f"{counts['failed']} failed; report in {out_dir}")
    if counts["failed"]:
        internal = any(o.kind is Outcome.INTERNAL_ERROR for o in outcomes)
        raise typer.Exit(EXIT_INTERNAL if internal else EXIT_USER)
