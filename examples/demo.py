"""`make demo`: build a small synthetic Cell2Net atlas and run `cell2net-attr` on it.

Writes demo-out/data.h5mu (3 genes, 500 cells, the upstream full-file layout) and one
checkpoint per gene in demo-out/models/, then runs the real command line on them:
all cells of one gene, a few cells by name through a shell pipeline, and the captum
reference engine on the same few cells to show the two agree.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from cell2net_attr.synthetic import GeneSpec, make_gene_models

OUT = Path("demo-out")
CLI = [sys.executable, "-m", "cell2net_attr"]


def sh(args: list[str], **kw) -> subprocess.CompletedProcess:
    print("$ cell2net-attr " + " ".join(args[len(CLI):]), file=sys.stderr, flush=True)
    return subprocess.run(args, check=True, text=True, **kw)


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    genes = [GeneSpec("GENE_A", 20, 30), GeneSpec("GENE_B", 12, 18), GeneSpec("GENE_C", 8, 10)]
    data, checkpoints = make_gene_models(OUT, genes, n_cells=500, n_tfs_total=40, n_covariates=2, seed=7)
    ck = str(checkpoints[0])
    print(f"built {data} and {len(checkpoints)} checkpoints in {OUT / 'models'}", file=sys.stderr)

    sh(CLI + ["inspect", ck, str(data), "--covariates", "cov0,cov1"])
    sh(CLI + ["run", ck, str(data), "--covariates", "cov0,cov1", "--out", str(OUT / "GENE_A.tf_attr.h5"),
              "--delta"])
    names = "\n".join(f"cell_{i:07d}" for i in (3, 141, 59, 26)) + "\n"
    for engine in ("fast", "captum"):
        sh(CLI + ["run", ck, str(data), "--covariates", "cov0,cov1", "--idx", "@-", "--engine", engine,
                  "--out", str(OUT / f"GENE_A.few.{engine}.npy")], input=names)
    fast, ref = (np.load(OUT / f"GENE_A.few.{e}.npy") for e in ("fast", "captum"))
    rel = float(np.abs(fast - ref).max() / np.abs(ref).max())
    with h5py.File(OUT / "GENE_A.tf_attr.h5") as f:
        shape = f["attributions"].shape
        top = [t.decode() for t in f["tf_names"][:][np.argsort(-np.abs(f["attributions"][:]).mean(0))[:3]]]
        delta = float(np.abs(f["convergence_delta"][:]).max())
    print(f"\nall cells: {OUT / 'GENE_A.tf_attr.h5'}  ({shape[0]} cells x {shape[1]} TFs, "
          f"max |convergence delta| {delta:.2e}); strongest TFs by mean |attribution|: {', '.join(top)}")
    print(f"4 cells, fast vs captum reference engine: max relative difference {rel:.1e}")
    print(f"outputs are in {OUT.resolve()}/")


if __name__ == "__main__":
    main()
