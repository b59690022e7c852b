"""Whole-atlas benchmark: `run-many` over every gene and every cell of a wide synthetic atlas.

The atlas is what users run on: many background genes and peaks that no model reads, sparse counts
(about 400 nonzeros per cell of RNA, 3,000 of ATAC), every background gene linked to 100 peaks in
``uns["peak_to_gene"]``, and several gene models of 100 peaks with 80-200 TFs (the README's
architecture) whose checkpoints carry upstream's per-cell ``results``. Prints, in one run:

* cell-genes per second and peak RSS of the real command line (its own process, `os.wait4`);
* the share of that time spent reading (one read-only pass over the same rows and columns);
* per-gene fixed costs against a gene's time (its share of the whole run), measured on the real
  command with every gene computing only 16 cells: as run-report.tsv times each gene's own work
  (lock, checkpoint, data checks, sequence encoder, engine, output file), and as the extra wall time
  per extra gene; then split in-process into checkpoint, module, gene data and engine;
* with `--baseline DIR` (an older checkout), the same command run from there, the speed-up, and the
  baseline's per-gene fixed cost measured the same way.

    python benchmarks/bench_atlas.py [--cells 20000] [--genes 24] [--device cpu] [--baseline /tmp/base]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cell2net_attr.model.architecture import ModelSpec
from cell2net_attr.synthetic import GeneSpec, random_module, save_checkpoint, write_mudata

RNA_VARS, RNA_PER_CELL = 4_000, 400
ATAC_PEAKS, ATAC_PER_CELL = 60_000, 3_000
N_TFS = 300
LINKS_PER_GENE = 100
LAYOUT = "v2"  # bumped whenever the atlas changes, so an older cached one is not reused


def build(root: Path, n_cells: int, n_genes: int) -> tuple[Path, Path]:
    """The atlas and its checkpoints under ``root`` (reused when already there)."""
    data, models = root / "atlas.h5mu", root / "models"
    if data.exists() and models.is_dir() and len(list(models.glob("*.pt"))) == n_genes:
        return data, models
    shutil.rmtree(root, ignore_errors=True)
    models.mkdir(parents=True)
    rng = np.random.default_rng(0)
    genes = [GeneSpec(f"G{i:03d}", 100, int(rng.integers(80, 201))) for i in range(n_genes)]
    n_model_peaks = 100 * n_genes
    t0 = time.perf_counter()
    write_mudata(data, genes, n_cells, N_TFS, n_covariates=2, seed=1,
                 background_genes=RNA_VARS - n_genes - N_TFS, background_peaks=ATAC_PEAKS - n_model_peaks,
                 rna_per_cell=RNA_PER_CELL, atac_per_cell=ATAC_PER_CELL, background_links=LINKS_PER_GENE)
    for i, g in enumerate(genes):
        spec = ModelSpec(n_peaks=g.n_peaks, peak_len=256, n_tfs=g.n_tfs, n_covariates=2,
                         n_filters=(64, 32, 32, 16), n_channels=4, kernel_size=5, n_dims=16, n_attn_blocks=1)
        save_checkpoint(random_module(spec, seed=10 + i), models / f"{g.name}.pt", n_cells=n_cells)
    print(f"built {data} ({data.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f}s",
          file=sys.stderr)
    return data, models


def run_many(code: Path, data: Path, models: Path, out: Path, device: str, *extra: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of `run-many` run from the checkout ``code``."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(code)}
    cmd = [sys.executable, "-m", "cell2net_attr", "run-many", str(models), str(data), "--out-dir", str(out),
           "--covariates", "cov0,cov1", "--device", device, "--quiet", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=code)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"run-many failed (from {code})")
    return seconds, usage.ru_maxrss / 1024


def reading_seconds(data: Path, models: Path) -> float:
    """One pass over every row of every gene's columns, as run-many reads them (no compute)."""
    import torch

    from cell2net_attr.data.job_index import DataIndex
    from cell2net_attr.data.rows import SharedRows
    from cell2net_attr.data.store import H5Store
    from cell2net_attr.model.checkpoint import load_checkpoint
    from cell2net_attr.pipeline.binding import bind
    from cell2net_attr.pipeline.stream import JOB_READ_ROWS

    store = H5Store(data)
    index = DataIndex(store)
    genes = [bind(load_checkpoint(ck), index, ["cov0", "cov1"], torch.device("cpu")).data
             for ck in sorted(models.glob("*.pt"))]
    reader = SharedRows(genes)
    rows = np.arange(genes[0].n_cells)
    t0 = time.perf_counter()
    for a in range(0, len(rows), JOB_READ_ROWS):
        reader.read(rows[a : a + JOB_READ_ROWS])
    seconds = time.perf_counter() - t0
    store.close()
    return seconds


def hashing_seconds(data: Path) -> float:
    """Seconds to hash the data file, as every job does once for its run identity."""
    from cell2net_attr.data.store import file_sha256

    t0 = time.perf_counter()
    file_sha256(data)
    return time.perf_counter() - t0


def fixed_costs_cli(code: Path, data: Path, models: Path, out: Path, device: str,
                    repeats: int = 5) -> tuple[float, float]:
    """A gene's own seconds in `run-many` when each gene computes only 16 cells, measured two ways.

    First, as the command's report times them (``seconds`` of run-report.tsv: lock, checkpoint, data
    checks, engine, its 16 cells, output file): the median over the genes of a run, for the fastest
    of ``repeats`` runs. Second, as the extra wall time per extra gene: the fastest of ``repeats`` runs
    with one gene and with all of them (start-up, shared by both, varies by more than the difference
    on a busy machine, so this one is the noisier)."""
    cks = sorted(models.glob("*.pt"))
    one, every, reported = [], [], []
    for _ in range(repeats):
        one.append(run_many(code, data, cks[0], out, device, "--idx", "0:16")[0])
        every.append(run_many(code, data, models, out, device, "--idx", "0:16")[0])
        with open(out / "run-report.tsv") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        reported.append(float(np.median([float(r["seconds"]) for r in rows])))
    return min(reported), (min(every) - min(one)) / (len(cks) - 1)


def fixed_cost_parts(data: Path, models: Path, device: str) -> dict[str, float]:
    """Mean seconds per gene of each part of its set-up, timed in-process on a warm second pass."""
    import torch

    from cell2net_attr.data.gene_view import load_gene_data
    from cell2net_attr.data.job_index import DataIndex
    from cell2net_attr.data.store import H5Store
    from cell2net_attr.engines.base import IGParams
    from cell2net_attr.engines.registry import make_engine
    from cell2net_attr.model.checkpoint import load_checkpoint

    store = H5Store(data)
    index = DataIndex(store)
    cks = sorted(models.glob("*.pt"))
    parts: dict[str, float] = {}
    for rep in range(2):  # the first pass warms the allocator and the job's shared tables
        parts = dict.fromkeys(("checkpoint", "module", "gene data", "engine"), 0.0)
        for ck in cks:
            t0 = time.perf_counter()
            checkpoint = load_checkpoint(ck)
            t1 = time.perf_counter()
            module = checkpoint.build_module().to(device)
            t2 = time.perf_counter()
            gene = load_gene_data(index, checkpoint.gene, checkpoint.spec, ["cov0", "cov1"])
            t3 = time.perf_counter()
            make_engine("fast", module, torch.from_numpy(gene.peak_seq).to(device),
                        torch.from_numpy(gene.peak_dist).to(device), IGParams())
            t4 = time.perf_counter()
            for key, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[key] += seconds / len(cks)
    store.close()
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=20_000)
    ap.add_argument("--genes", type=int, default=24)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/c2n-atlas"))
    ap.add_argument("--baseline", type=Path, help="an older checkout to run the same command from")
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build_only:
        build(args.dir / f"{args.cells}x{args.genes}-{LAYOUT}", args.cells, args.genes)
        return
    here = Path(__file__).resolve().parents[1]
    root = args.dir / f"{args.cells}x{args.genes}-{LAYOUT}"
    # built in a child: a parent that once held the atlas in memory would lend its RSS to the runs it forks
    subprocess.run([sys.executable, __file__, "--build-only", "--cells", str(args.cells), "--genes", str(args.genes),
                    "--dir", str(args.dir)], check=True)
    data, models = root / "atlas.h5mu", root / "models"
    cell_genes = args.cells * args.genes
    print(f"atlas: {args.cells} cells; rna {RNA_VARS} vars (~{RNA_PER_CELL} nnz/cell); atac {ATAC_PEAKS} peaks "
          f"(~{ATAC_PER_CELL} nnz/cell); {args.genes} models of 100 peaks, 80-200 TFs; n_steps 100; "
          f"device {args.device}; {os.cpu_count()} CPUs", flush=True)
    rows = []
    if args.baseline:
        rows.append(("baseline", *run_many(args.baseline, data, models, args.dir / "out-base", args.device)))
    rows.append(("this checkout", *run_many(here, data, models, args.dir / "out", args.device)))
    print(f"\n{'run-many from':<16}{'seconds':>10}{'cell-genes/s':>14}{'ms/cell-gene':>14}{'peak RSS MiB':>14}")
    for name, seconds, rss in rows:
        print(f"{name:<16}{seconds:>10.1f}{cell_genes / seconds:>14,.0f}{1000 * seconds / cell_genes:>14.4f}"
              f"{rss:>14.0f}")
    seconds = rows[-1][1]
    reading = reading_seconds(data, models)
    parts = fixed_cost_parts(data, models, args.device)
    fixed_cli = fixed_costs_cli(here, data, models, args.dir / "out-fixed", args.device)
    hashing = hashing_seconds(data)
    per_gene = seconds / args.genes
    print(f"\nreading (one pass over every gene's rows and columns): {reading:.2f}s = "
          f"{100 * reading / seconds:.1f}% of the run; with the data file's sha256 (the run's identity, "
          f"{hashing:.2f}s): {100 * (reading + hashing) / seconds:.1f}%")
    costs = [("this checkout", fixed_cli, per_gene)]
    if args.baseline:
        costs.append(("baseline", fixed_costs_cli(args.baseline, data, models, args.dir / "out-fixed", args.device),
                      rows[0][1] / args.genes))
    for what, (reported, extra), gene_seconds in costs:
        print(f"per-gene fixed cost in run-many ({what}; a gene's own work on 16 cells): {1000 * reported:.0f} ms "
              f"as its run-report times it = {100 * reported / gene_seconds:.1f}% of its gene's time at "
              f"{args.cells} cells; {1000 * extra:.0f} ms as extra wall time per gene "
              f"({100 * extra / gene_seconds:.1f}%)")
    print("of which, in-process (warm): " + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in parts.items()))
    if args.baseline:
        print(f"speed-up over the baseline: {rows[0][1] / seconds:.2f}x")


if __name__ == "__main__":
    main()
