"""Variant reading and placement at genome scale: a synthetic whole-genome VCF against ~100k peak windows.

Writes a VCF of ``--records`` SNVs and indels spread over 22 chromosomes (gzip-compressed), and
``--windows`` 256-bp peak windows modelled by genes of 100 peaks each (neighbouring genes share
peaks, so windows overlap). Prints, interleaved over ``--repeats`` rounds:

* ``read_variants`` with the window filter (``chroms`` and ``keep=WindowIndex.overlaps``) and without,
  in records per second;
* ``WindowIndex.place`` of every SNV of the file (no filter, most outside every window) in variants per
  second, and the (variant, gene, peak) hits found;
* building the ``WindowIndex``.

    python benchmarks/bench_variants.py [--records 1000000] [--windows 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cell2net_attr.data.peak_windows import WindowIndex, peak_windows
from cell2net_attr.data.variants import read_variants

CHROMS = [f"chr{i}" for i in range(1, 23)]
LENGTH = 100_000_000  # every synthetic chromosome


def make_windows(n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    chrom = rng.choice(CHROMS, n)
    mid = rng.integers(1_000, LENGTH - 1_000, n)
    names = [f"{c}-{m - 250}-{m + 250}" for c, m in zip(chrom, mid)]
    names = list(dict.fromkeys(names))
    seqs = ["".join(rng.choice(list("ACGT"), 256)) for _ in names]
    windows = peak_windows(names, seqs)
    order = np.lexsort((windows["start"].to_numpy(), windows["chrom"].to_numpy()))
    peaks = windows["peak"].to_numpy()[order]
    # genes of 100 consecutive peaks, each gene starting 50 peaks after the previous: every peak in two genes
    rows = [(f"G{g}", p) for g, first in enumerate(range(0, len(peaks), 50)) for p in peaks[first:first + 100]]
    return windows, pd.DataFrame(rows, columns=["gene", "peak"])


def write_vcf(path: Path, n: int, windows: pd.DataFrame, rng: np.random.Generator) -> None:
    chrom = rng.choice(CHROMS, n)
    pos = rng.integers(1, LENGTH, n)
    # one record in 200 inside a window, with the stored base as REF
    inside = rng.random(n) < 0.005
    pick = rng.integers(0, len(windows), int(inside.sum()))
    off = rng.integers(0, 256, len(pick))
    chrom[inside] = windows["chrom"].to_numpy()[pick]
    pos[inside] = windows["start"].to_numpy()[pick] + off + 1
    ref = rng.choice(list("ACGT"), n)
    ref[inside] = [windows["sequence"].iat[p][o] for p, o in zip(pick, off)]
    alt = np.where(ref == "A", "G", "A")
    indel = rng.random(n) < 0.1
    order = np.lexsort((pos, chrom))
    with gzip.open(path, "wt", compresslevel=1) as out:
        out.write("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
        for i in order:
            r = ref[i] + "T" if indel[i] else ref[i]
            out.write(f"{chrom[i]}\t{pos[i]}\trs{i}\t{r}\t{alt[i]}\t50\tPASS\tDP=10\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--windows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    windows, genes = make_windows(args.windows, rng)
    with tempfile.TemporaryDirectory() as tmp:
        vcf = Path(tmp) / "genome.vcf.gz"
        write_vcf(vcf, args.records, windows, rng)
        print(f"{args.records:,} records ({vcf.stat().st_size / 1e6:.1f} MB gzip), {len(windows):,} windows, "
              f"{genes['gene'].nunique():,} genes, {len(genes):,} (gene, peak) pairs")
        for round_ in range(args.repeats):
            clock = _Clock()
            index = WindowIndex(windows, genes)
            t_index = clock.lap()
            kept = read_variants(vcf, chroms=index.chroms, keep=index.overlaps)
            t_kept = clock.lap()
            every = read_variants(vcf)
            t_all = clock.lap()
            placed = index.place(every.snvs)
            t_place = clock.lap()
            placed_kept = index.place(kept.snvs)
            same = ["id", "gene", "peak", "offset"]  # the filter loses no hit
            assert placed_kept.hits[same].equals(placed.hits[same])
            n, m = every.n_records, len(every.snvs)
            kinds = placed.skipped["kind"].value_counts().to_dict()
            print(f"round {round_} (rates per wall second | per CPU second):")
            print(f"  WindowIndex     {_rate(1, t_index, 's')}")
            print(f"  read, filtered  {_rate(n, t_kept, 'rec/s')}  kept {len(kept.snvs):,} SNVs + "
                  f"{len(kept.skipped):,} skipped")
            print(f"  read, all       {_rate(n, t_all, 'rec/s')}")
            print(f"  place all SNVs  {_rate(m, t_place, 'SNV/s')}  {len(placed.hits):,} hits, skipped {kinds}")


class _Clock:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        out = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return out


def _rate(n: int, took: tuple[float, float], unit: str) -> str:
    if unit == "s":
        return f"{took[0]:.2f} s | {took[1]:.2f} s"
    return f"{n / took[0]:>12,.0f} | {n / took[1]:>12,.0f} {unit}"

if __name__ == "__main__":
    main()
