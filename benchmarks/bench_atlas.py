"""Whole-atlas benchmark: `run-many` over every gene and every cell of a synthetic atlas.

Two shapes (``--shape``):

* ``wide`` (the default): what users run on at scale. Many background genes and peaks that no model
  reads, sparse counts (about 400 nonzeros per cell of RNA, 3,000 of ATAC), every background gene
  linked to 100 peaks in ``uns["peak_to_gene"]``, and gene models of 100 peaks with 80-200 TFs (the
  README's architecture); 20,000 cells, 24 genes.
* ``tutorial``: upstream's tutorials (PBMC, K562). 1,000 metacells whose counts are sums over cells
  (39% of the peaks open, 60% of the genes expressed, counts around 7), 48 gene models of 80 peaks and the same 513
  TFs each. Here the per-gene fixed costs weigh about as much as the cells.

Every checkpoint carries upstream's per-cell ``results`` (one entry per cell). Prints, in one run:

* cell-genes per second and peak RSS of the real command line (its own process, `os.wait4`);
* the share of that time spent reading (one read-only pass over the same rows and columns);
* per-gene fixed costs against a gene's time (its share of the whole run), measured on the real
  command with every gene computing only 16 cells: as run-report.tsv times each gene's own work
  (lock, checkpoint, data checks, sequence encoder, engine, training check, output file), and as the
  extra wall time per extra gene; then split in-process into checkpoint, module, gene data, engine
  and training check;
* with `--baseline DIR` (an older checkout), the same command run from there, the speed-up, and the
  baseline's per-gene fixed cost measured the same way.

    python benchmarks/bench_atlas.py [--shape wide|tutorial] [--cells N] [--genes N] [--device cpu|cuda]
                                     [--baseline /tmp/base] [--repeats 5]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cell2net_attr.model.architecture import ModelSpec
from cell2net_attr.synthetic import GeneSpec, random_module, save_checkpoint, write_mudata

LAYOUT = "v3"  # bumped whenever an atlas changes, so an older cached one is not reused


@dataclass(frozen=True)
class Shape:
    """The sizes of a synthetic atlas and of its gene models."""

    name: str
    cells: int
    genes: int
    rna_vars: int  # modelled genes, TFs and background genes
    rna_per_cell: int  # nonzeros per cell
    atac_peaks: int  # the models' peaks and background peaks
    atac_per_cell: int
    n_tfs: int  # TFs of the atlas
    tfs_per_gene: tuple[int, int]  # each model's TF count is drawn from this range (inclusive)
    peaks_per_gene: int
    links_per_gene: int  # peak_to_gene rows of each background gene
    count_mean: float | None = None  # None: Poisson(2 or 3) + 1 counts; else Poisson(mean) + 1 (metacells)

    def describe(self) -> str:
        lo, hi = self.tfs_per_gene
        tfs = f"{lo}" if lo == hi else f"{lo}-{hi}"
        counts = "sparse counts" if self.count_mean is None else f"summed counts (mean {self.count_mean + 1:.0f})"
        return (f"{self.name} atlas: {self.cells} cells; rna {self.rna_vars} vars (~{self.rna_per_cell} nnz/cell); "
                f"atac {self.atac_peaks} peaks (~{self.atac_per_cell} nnz/cell, "
                f"{100 * self.atac_per_cell / self.atac_peaks:.0f}% open), {counts}; {self.genes} models of "
                f"{self.peaks_per_gene} peaks, {tfs} TFs; checkpoints with {self.cells} results each")


SHAPES = {
    "wide": Shape("wide", 20_000, 24, 4_000, 400, 60_000, 3_000, 300, (80, 200), 100, 100),
    "tutorial": Shape("tutorial", 1_000, 48, 2_000, 1_200, 10_000, 3_900, 513, (513, 513), 80, 80, count_mean=6.0),
}


def build(root: Path, shape: Shape) -> tuple[Path, Path]:
    """The atlas and its checkpoints under ``root`` (reused when already there)."""
    data, models = root / "atlas.h5mu", root / "models"
    if data.exists() and models.is_dir() and len(list(models.glob("*.pt"))) == shape.genes:
        return data, models
    shutil.rmtree(root, ignore_errors=True)
    models.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lo, hi = shape.tfs_per_gene
    genes = [GeneSpec(f"G{i:03d}", shape.peaks_per_gene, int(rng.integers(lo, hi + 1))) for i in range(shape.genes)]
    t0 = time.perf_counter()
    write_mudata(data, genes, shape.cells, shape.n_tfs, n_covariates=2, seed=1,
                 background_genes=shape.rna_vars - shape.genes - shape.n_tfs,
                 background_peaks=shape.atac_peaks - shape.peaks_per_gene * shape.genes,
                 rna_per_cell=shape.rna_per_cell, atac_per_cell=shape.atac_per_cell,
                 background_links=shape.links_per_gene)
    if shape.count_mean is not None:
        _sum_counts(data, shape.count_mean)
    for i, g in enumerate(genes):
        spec = ModelSpec(n_peaks=g.n_peaks, peak_len=256, n_tfs=g.n_tfs, n_covariates=2,
                         n_filters=(64, 32, 32, 16), n_channels=4, kernel_size=5, n_dims=16, n_attn_blocks=1)
        save_checkpoint(random_module(spec, seed=10 + i), models / f"{g.name}.pt", n_cells=shape.cells)
    print(f"built {data} ({data.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f}s",
          file=sys.stderr)
    return data, models


def _sum_counts(data: Path, mean: float) -> None:
    """Metacell-like counts: every nonzero of both modalities' ``X`` and ``counts`` redrawn as Poisson(mean) + 1
    (sums over the cells of a metacell), the sparsity pattern kept."""
    import h5py

    rng = np.random.default_rng(2)
    with h5py.File(data, "r+") as f:
        for mod in ("rna", "atac"):
            values = None
            for key in (f"mod/{mod}/X/data", f"mod/{mod}/layers/counts/data"):
                ds = f[key]
                if values is None:
                    values = (rng.poisson(mean, ds.shape[0]) + 1).astype(ds.dtype)
                ds[...] = values


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


def fixed_costs_cli(codes: list[Path], data: Path, models: Path, out: Path, device: str,
                    repeats: int = 5) -> list[tuple[float, float]]:
    """A gene's own seconds in `run-many` when each gene computes only 16 cells, measured two ways, for each
    checkout of ``codes`` (their runs interleaved, so that each sees the same load).

    First, as the command's report times them (``seconds`` of run-report.tsv: lock, checkpoint, data
    checks, engine, training check, its 16 cells, output file): the median over the genes of a run, for
    the fastest of ``repeats`` runs. Second, as the extra wall time per extra gene: the fastest of
    ``repeats`` runs with one gene and with all of them (start-up, shared by both, varies by more than
    the difference on a busy machine, so this one is the noisier)."""
    cks = sorted(models.glob("*.pt"))
    one = [[] for _ in codes]
    every = [[] for _ in codes]
    reported = [[] for _ in codes]
    for _ in range(repeats):
        for i, code in enumerate(codes):
            one[i].append(run_many(code, data, cks[0], out, device, "--idx", "0:16")[0])
            every[i].append(run_many(code, data, models, out, device, "--idx", "0:16")[0])
            with open(out / "run-report.tsv") as fh:
                rows = list(csv.DictReader(fh, delimiter="\t"))
            reported[i].append(float(np.median([float(r["seconds"]) for r in rows])))
    return [(min(reported[i]), (min(every[i]) - min(one[i])) / (len(cks) - 1)) for i in range(len(codes))]


PARTS = ("checkpoint", "module", "gene data", "engine", "training check")


def fixed_cost_parts(data: Path, models: Path, device: str) -> dict[str, float]:
    """Mean seconds per gene of each part of its set-up, timed in-process on a warm second pass (this checkout).

    ``training check`` is the comparison of the data with the model's training statistics
    (pipeline/training_check.py) on its sample of cells, read once beforehand."""
    import torch

    from cell2net_attr.data.gene_view import load_gene_data
    from cell2net_attr.data.job_index import DataIndex
    from cell2net_attr.data.rows import SharedRows
    from cell2net_attr.data.store import H5Store
    from cell2net_attr.engines.base import IGParams
    from cell2net_attr.engines.registry import make_engine
    from cell2net_attr.model.checkpoint import load_checkpoint
    from cell2net_attr.model.training_match import check_module
    from cell2net_attr.pipeline.training_check import sample_rows

    dev = torch.device(device)

    def clock() -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter()

    store = H5Store(data)
    index = DataIndex(store)
    cks = sorted(models.glob("*.pt"))
    specs = [load_checkpoint(ck) for ck in cks]
    genes = [load_gene_data(index, c.gene, c.spec, ["cov0", "cov1"]) for c in specs]
    sample = SharedRows(genes).read(sample_rows(len(index.names)))  # once for all genes, as the check reads it
    parts: dict[str, float] = {}
    for _ in range(2):  # the first pass warms the allocator and the job's shared tables
        parts = dict.fromkeys(PARTS, 0.0)
        for ck, batch in zip(cks, sample):
            t0 = clock()
            checkpoint = load_checkpoint(ck)
            t1 = clock()
            module = checkpoint.build_module().to(dev)
            t2 = clock()
            gene = load_gene_data(index, checkpoint.gene, checkpoint.spec, ["cov0", "cov1"])
            t3 = clock()
            engine = make_engine("fast", module, torch.from_numpy(gene.peak_seq).to(dev),
                                 torch.from_numpy(gene.peak_dist).to(dev), IGParams())
            t4 = clock()
            z = engine.preactivation(*(torch.from_numpy(x).to(dev) for x in (batch.peak_acc, batch.tf_exp,
                                                                              batch.covariates)))
            check_module(module, z, batch.covariates, ["cov0", "cov1"])
            t5 = clock()
            for key, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                parts[key] += seconds / len(cks)
    store.close()
    return parts


def whole_runs(codes: list[Path], data: Path, models: Path, out: Path, device: str,
               runs: int) -> list[tuple[float, float]]:
    """The fastest of ``runs`` whole `run-many` runs of each checkout (interleaved): seconds and its peak RSS."""
    best = [(float("inf"), 0.0) for _ in codes]
    for _ in range(runs):
        for i, code in enumerate(codes):
            seconds, rss = run_many(code, data, models, out, device)
            if seconds < best[i][0]:
                best[i] = (seconds, rss)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="wide")
    ap.add_argument("--cells", type=int, help="cells of the atlas (default: the shape's)")
    ap.add_argument("--genes", type=int, help="gene models (default: the shape's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/c2n-atlas"))
    ap.add_argument("--baseline", type=Path, help="an older checkout to run the same command from")
    ap.add_argument("--runs", type=int, help="whole runs per checkout, the fastest kept (default: 1 for the "
                    "wide shape, 5 for the tutorial one)")
    ap.add_argument("--repeats", type=int, default=5, help="runs per checkout for the fixed costs")
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    shape = replace(SHAPES[args.shape], cells=args.cells or SHAPES[args.shape].cells,
                    genes=args.genes or SHAPES[args.shape].genes)
    root = args.dir / f"{shape.name}-{shape.cells}x{shape.genes}-{LAYOUT}"
    if args.build_only:
        build(root, shape)
        return
    here = Path(__file__).resolve().parents[1]
    # built in a child: a parent that once held the atlas in memory would lend its RSS to the runs it forks
    subprocess.run([sys.executable, __file__, "--build-only", "--shape", shape.name, "--cells", str(shape.cells),
                    "--genes", str(shape.genes), "--dir", str(args.dir)], check=True)
    data, models = root / "atlas.h5mu", root / "models"
    cell_genes = shape.cells * shape.genes
    runs = args.runs or (1 if shape.name == "wide" else 5)
    print(f"{shape.describe()}; n_steps 100; device {args.device}; {os.cpu_count()} CPUs; "
          f"whole runs: fastest of {runs}", flush=True)
    codes = ([args.baseline.resolve()] if args.baseline else []) + [here]
    names = (["baseline"] if args.baseline else []) + ["this checkout"]
    rows = whole_runs(codes, data, models, args.dir / "out", args.device, runs)
    print(f"\n{'run-many from':<16}{'seconds':>10}{'cell-genes/s':>14}{'ms/cell-gene':>14}{'ms/gene':>10}"
          f"{'peak RSS MiB':>14}")
    for name, (seconds, rss) in zip(names, rows):
        print(f"{name:<16}{seconds:>10.2f}{cell_genes / seconds:>14,.0f}{1000 * seconds / cell_genes:>14.4f}"
              f"{1000 * seconds / shape.genes:>10.1f}{rss:>14.0f}")
    seconds = rows[-1][0]
    reading = reading_seconds(data, models)
    parts = fixed_cost_parts(data, models, args.device)
    fixed = fixed_costs_cli(codes, data, models, args.dir / "out-fixed", args.device, args.repeats)
    hashing = hashing_seconds(data)
    print(f"\nreading (one pass over every gene's rows and columns): {reading:.2f}s = "
          f"{100 * reading / seconds:.1f}% of the run; with the data file's sha256 (the run's identity, "
          f"{hashing:.2f}s): {100 * (reading + hashing) / seconds:.1f}%")
    for name, (reported, extra), (whole, _) in zip(names, fixed, rows):
        gene_seconds = whole / shape.genes
        print(f"per-gene fixed cost in run-many ({name}; a gene's own work on 16 cells): {1000 * reported:.1f} ms "
              f"as its run-report times it = {100 * reported / gene_seconds:.1f}% of a gene's time at "
              f"{shape.cells} cells ({1000 * gene_seconds:.1f} ms: the whole run / {shape.genes}); "
              f"{1000 * extra:.1f} ms as extra wall time per gene ({100 * extra / gene_seconds:.1f}%)")
    print("of which, in-process (this checkout, warm): " + ", ".join(f"{k} {1000 * v:.1f} ms"
                                                                     for k, v in parts.items()))
    if args.baseline:
        print(f"speed-up over the baseline: {rows[0][0] / seconds:.2f}x")


if __name__ == "__main__":
    main()
