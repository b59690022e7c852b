"""``plan``: what a ``run-many`` job will cost, before it is submitted (the prediction on stdout: it is the
command's product; progress on stderr)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import RUN_MANY_OPTIONS, OutputFormat, err, plain, reported, run_options, shared_options

PLAN_HELP = (
    "Predict what run-many MODELS DATA [options] will cost: cells x genes, wall and CPU time for --threads, peak "
    "memory, output bytes, and the SLURM array tasks that fit --time-limit (or the time per task for --tasks).\n\n"
    "It reads the checkpoints' shapes and the selected cells, and computes a few cells of a few genes through "
    "the real driver (into a scratch folder, removed after) to calibrate this machine. Nothing is written."
)


@shared_options(*RUN_MANY_OPTIONS)
def plan(
    models: list[str] = typer.Argument(..., help="Checkpoint directories (*.pt), checkpoints, or @FILE lists, as "
                                                 "run-many takes them."),
    data: Path = typer.Argument(..., help="The full multi-gene .h5mu."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", show_default="the system's temporary folder",
                                           help="Where the job would write: the calibration writes its scratch "
                                                "files there, to time that disk."),
    fmt: OutputFormat = typer.Option("h5", "--format", help="Output format of every gene."),
    time_limit: Optional[str] = typer.Option(None, "--time-limit", show_default="none",
                                             help="SLURM time limit of one array task (MM, HH:MM:SS, D-HH:MM...): "
                                                  "plan the fewest tasks that fit it."),
    tasks: Optional[int] = typer.Option(None, "--tasks", min=1, show_default="one process",
                                        help="Plan a SLURM array of N tasks (the time per task)."),
    calibration_cells: Optional[int] = typer.Option(None, "--calibration-cells", min=2,
                                                    show_default="1,024 for TFs (two blocks), 64 for peaks",
                                                    help="Cells computed per calibration gene."),
    calibration_genes: int = typer.Option(2, "--calibration-genes", min=1,
                                          help="Calibration genes (the smallest and the largest, then between)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    **opts,
) -> None:
    """Predict a run-many job's time, memory and output bytes (see ``PLAN_HELP``)."""
    from ..pipeline.models import collect_checkpoints
    from ..pipeline.plan import parse_time_limit
    from ..pipeline.plan_job import plan_job
    from ..pipeline.shards import parse_shard

    with reported():
        limit = parse_time_limit(time_limit) if time_limit is not None else None
        checkpoints = collect_checkpoints(models)
        if opts["shard"] is not None:  # one task's share of the genes
            start, stop = parse_shard(opts["shard"]).bounds(len(checkpoints))
            checkpoints = checkpoints[start:stop]
        log = None if opts["quiet"] else (lambda line: err(f"plan: {line}"))
        if log:
            log(f"reading {len(checkpoints)} checkpoints and {data}")
        options = run_options(opts)
        result = plan_job(checkpoints, data, plain(fmt), options, tasks=tasks, time_limit=limit,
                          cells=calibration_cells, genes=calibration_genes, scratch=out_dir, log=log)
        if as_json:
            typer.echo(json.dumps(result.as_dict(), indent=2))
        else:
            typer.echo(describe(result, plain(fmt), options))


def describe(plan, fmt: str, opts) -> str:
    """The plan as lines for a person."""
    from ..pipeline.plan import format_bytes, format_seconds

    lines = [f"job:     {plan.genes} genes x {plan.cells:,} cells = {plan.cell_genes:,} cell-genes "
             f"({opts.engine} engine, {opts.target}, n_steps {opts.n_steps}, {plan.threads} threads, {plan.device})",
             f"time:    {format_seconds(plan.serial_seconds)} as one process; "
             f"{format_seconds(plan.cpu_seconds)} CPU in all",
             f"memory:  {format_bytes(plan.peak_memory_bytes)} peak per process"]
    out = []
    if plan.per_cell_bytes:
        out.append(f"{format_bytes(plan.per_cell_bytes)} of per-cell files ({fmt}, {opts.dtype}, "
                   f"compression {opts.compression})")
    if opts.summary is not None:
        out.append(f"{format_bytes(plan.summary_bytes)} of summary ({Path(opts.summary).name})")
    lines.append(f"output:  {' + '.join(out) or 'nothing'}")
    if plan.tasks > 1 or plan.time_limit is not None:
        limit = f" (--time-limit {format_seconds(plan.time_limit)})" if plan.time_limit is not None else ""
        lines.append(f"array:   {plan.tasks} tasks of at most {format_seconds(plan.task_seconds)} each{limit}; "
                     f"the whole job {format_seconds(plan.seconds)} when they run at once")
        lines.append(f"         sbatch --array=0-{plan.tasks - 1} --time={_slurm_time(plan.task_seconds / 0.8)} "
                     f"--cpus-per-task={plan.threads} ...")
    lines += [f"note:    {n}" for n in plan.notes]
    return "\n".join(lines)


def _slurm_time(seconds: float) -> str:
    """``D-HH:MM:SS`` rounded up to the minute."""
    minutes = int(-(-seconds // 60))
    days, minutes = divmod(minutes, 1440)
    return f"{days}-{minutes // 60:02d}:{minutes % 60:02d}:00" if days else f"{minutes // 60:02d}:{minutes % 60:02d}:00"
