"""``run-many``: one attribution file per gene checkpoint, the data file opened and hashed once.

Genes whose output already exists are skipped (outputs appear only when complete, so an existing
file is a finished one). A gene that fails is recorded in ``run-report.tsv`` and the run goes on.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .._lists import is_list_file, read_list_file
from ..data.store import H5Store
from ..errors import UserError
from ..io.writers import atomic_output
from ..model.checkpoint import file_sha256
from .run import RunOptions, run_one
from .shards import Shard

REPORT = "run-report.tsv"
FORMATS = ("h5", "npy")


@dataclass
class GeneOutcome:
    """What happened to one gene."""

    gene: str
    checkpoint: Path
    status: str  # done, skipped, failed
    output: Path
    seconds: float = 0.0
    error: str = ""


def collect_checkpoints(items: list[str]) -> list[Path]:
    """Checkpoints from directories (their ``*.pt``), files, and ``@FILE`` lists, in order."""
    found: list[Path] = []
    for item in items:
        if is_list_file(item):
            found += [Path(line) for line in read_list_file(item, "checkpoint list")]
        elif Path(item).is_dir():
            found += sorted(Path(item).glob("*.pt"))
        else:
            found.append(Path(item))
    missing = [str(p) for p in found if not p.is_file()]
    if missing:
        raise UserError(f"checkpoint(s) not found: {', '.join(missing[:5])}", missing[0])
    if not found:
        raise UserError("no checkpoints (*.pt) found", " ".join(items))
    stems = [p.stem for p in found]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise UserError(f"several checkpoints for gene(s) {dup[:5]}: outputs are named by gene", "MODELS")
    return found


def run_many(
    checkpoints: list[Path],
    data: Path,
    out_dir: Path,
    fmt: str,
    opts: RunOptions,
    on_gene: Callable[[int, int, GeneOutcome], None] | None = None,
    shard: Shard | None = None,
) -> list[GeneOutcome]:
    """Attribute every checkpoint against ``data`` into ``out_dir/<gene>.<fmt>``.

    With a ``shard``, only that contiguous part of the genes is run and the report is
    ``run-report-0000K-of-0000N.tsv``. Returns one outcome per gene; the report is written
    even when interrupted.
    """
    report = out_dir / REPORT
    if shard is not None and shard.count > 1:
        start, stop = shard.bounds(len(checkpoints))
        checkpoints, report = checkpoints[start:stop], shard.path(report)
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}', choose from {', '.join(FORMATS)}", "--format")
    opts.params()  # flag errors before any file is touched
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output directory ({exc.strerror})", out_dir) from None
    store = H5Store(data, locking=opts.hdf5_locking)
    outcomes: list[GeneOutcome] = []
    try:
        data_sha = file_sha256(data)
        for i, ck in enumerate(checkpoints):
            outcome = _one_gene(ck, data, out_dir / f"{ck.stem}.{fmt}", opts, store, data_sha)
            outcomes.append(outcome)
            if on_gene is not None:
                on_gene(i, len(checkpoints), outcome)
    finally:
        store.close()
        write_report(report, outcomes)
    return outcomes


def _one_gene(ck: Path, data: Path, out: Path, opts: RunOptions, store: H5Store, data_sha: str) -> GeneOutcome:
    if out.exists() and not opts.overwrite:
        return GeneOutcome(ck.stem, ck, "skipped", out)
    t0 = time.monotonic()
    try:
        run_one(ck, data, replace(opts, out=out, gene=None), store=store, data_sha256=data_sha)
    except UserError as exc:
        return GeneOutcome(ck.stem, ck, "failed", out, time.monotonic() - t0, str(exc))
    except Exception as exc:  # noqa: BLE001 - one gene's bug must not lose the other genes
        first = (str(exc).strip().splitlines() or [""])[0]
        return GeneOutcome(ck.stem, ck, "failed", out, time.monotonic() - t0,
                           f"internal error: {type(exc).__name__}: {first}")
    return GeneOutcome(ck.stem, ck, "done", out, time.monotonic() - t0)


def write_report(path: Path, outcomes: list[GeneOutcome]) -> None:
    """``gene, status, seconds, checkpoint, output, error`` per gene, written atomically."""
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["gene", "status", "seconds", "checkpoint", "output", "error"])
        for o in outcomes:
            w.writerow([o.gene, o.status, f"{o.seconds:.2f}", o.checkpoint, o.output, o.error.replace("\t", " ")])
