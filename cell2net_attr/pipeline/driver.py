"""The one compute driver: every job of a group fed from the shared row blocks of their selection.

``run``, ``run-many`` and the notebook API all compute through :func:`compute`; what becomes of the outputs
when it is interrupted or fails is the lifecycle's (:mod:`cell2net_attr.pipeline.lifecycle`).
"""

from __future__ import annotations

from collections.abc import Callable

from ..data.rows import Batch, SharedRows
from ..errors import UserError
from .gene_job import GeneJob
from .progress import NullProgress, Progress
from .stream import stream
from .training_check import check_training

#: Called with a job whose gene failed (its inputs or its engine) while the others go on.
OnFailure = Callable[[GeneJob, Exception], None]


def compute(jobs: list[GeneJob], num_workers: int = 0, progress: Progress | None = None,
            on_failure: OnFailure | None = None, check: bool = True) -> None:
    """Feed every job from the shared row blocks of their selection, each block read once.

    With ``on_failure``, a gene that fails is handed to it and the others go on (a gene whose inputs are
    not finite gets its error instead of a batch); otherwise the first error propagates. With ``check``,
    each gene's data is first compared with its model's training statistics (a warning when they differ).
    """
    live = [j for j in jobs if j.failed is None]
    if not live:
        return
    if check:
        check_training([j.model for j in live], [j.engine for j in live])
    rows = live[0].spec.rows
    first = min(j.done_before for j in live)
    reader = SharedRows([j.model.data for j in live])
    progress = progress or NullProgress()
    progress.start(len(rows) - first, live[0].gene if len(live) == 1 else f"{len(live)} genes")

    def feeder(job: GeneJob) -> Callable[[int, Batch | UserError], None]:
        def feed(start: int, batch: Batch | UserError) -> None:
            if job.failed is not None:
                return
            try:
                job.accept(first + start, batch)
            except Exception as exc:  # noqa: BLE001 - isolated: one gene's failure must not stop the others
                if on_failure is None:
                    raise
                on_failure(job, exc)
        return feed

    try:
        stream([feeder(j) for j in live], lambda r: reader.read(r, strict=on_failure is None), rows[first:],
               live[0].spec.blocks.read, num_workers, progress.advance)
    finally:
        progress.stop()
