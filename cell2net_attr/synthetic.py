"""Synthetic Cell2Net checkpoints and MuData files in the upstream 0.13 layout.

Used by ``make demo``, the tests of randomly built models and the benchmarks. The files
have exactly the structure upstream writes (checkpoint dict keys, ``uns["peak_to_gene"]``,
``rna.uns["gene_tf"]``, ``atac.uns["peaks"]["sequence"]``, sparse ``layers["counts"]``),
with random weights and data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .model.architecture import Cell2NetModule, ModelSpec


@dataclass(frozen=True)
class GeneSpec:
    """A synthetic gene: how many peaks and TFs its model uses."""

    name: str
    n_peaks: int
    n_tfs: int


def random_module(spec: ModelSpec, seed: int = 0) -> Cell2NetModule:
    """A module with random weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    module = Cell2NetModule(spec)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.num_features, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))
    return module.eval()


def save_checkpoint(module: Cell2NetModule, path: str | Path, n_cells: int = 10) -> Path:
    """Write ``module`` the way ``Cell2Net.save`` does (the keys and value types of 0.13)."""
    spec = module.spec
    summary = {"n_peaks": spec.n_peaks, "peak_len": spec.peak_len, "n_tfs": spec.n_tfs,
               "n_covariates": spec.n_covariates, "n_filters": list(spec.n_filters),
               "n_channels": spec.n_channels, "n_dims": spec.n_dims}
    history = {"epochs": {0: 0}, "train_loss": {0: 1.0}, "valid_loss": {0: 1.0},
               "train_corr": {0: 0.0}, "valid_corr": {0: 0.0}}
    # upstream keeps one prediction per training cell: on an atlas, the bulk of the file's pickle
    rng = np.random.default_rng(n_cells)
    results = {"true": dict(enumerate(rng.poisson(2.0, n_cells).astype(float).tolist())),
               "pred": dict(enumerate(rng.gamma(2.0, 1.0, n_cells).tolist())),
               "data": dict(enumerate(rng.choice(["train", "valid", "test"], n_cells, p=[0.8, 0.1, 0.1]).tolist()))}
    path = Path(path)
    torch.save({"history": history, "model_state_dict": module.state_dict(), "module_summary": summary,
                "results": results}, path)
    return path


def random_sequences(rng: np.random.Generator, n: int, length: int) -> list[str]:
    """Random ACGT sequences, every fifth with three Ns (as in the upstream fixtures)."""
    letters = np.array(list("ACGT"))
    seqs = []
    for i in range(n):
        s = letters[rng.integers(0, 4, length)]
        if i % 5 == 0:
            s[rng.choice(length, 3, replace=False)] = "N"
        seqs.append("".join(s))
    return seqs


def random_counts(rng: np.random.Generator, n_rows: int, n_cols: int, per_row: float, lam: float):
    """A CSR count matrix with about ``per_row`` nonzeros per row (Poisson(``lam``) + 1), built in O(nnz)."""
    import scipy.sparse as sp

    total = int(n_rows * per_row)
    keys = np.unique(rng.integers(0, n_rows, total, dtype=np.int64) * n_cols
                     + rng.integers(0, n_cols, total, dtype=np.int64))
    rows, cols = np.divmod(keys, n_cols)
    data = (rng.poisson(lam, len(keys)) + 1).astype(np.float32)
    indptr = np.concatenate(([0], np.cumsum(np.bincount(rows, minlength=n_rows))))
    return sp.csr_matrix((data, cols.astype(np.int32), indptr), shape=(n_rows, n_cols))


def write_mudata(path: str | Path, genes: list[GeneSpec], n_cells: int, n_tfs_total: int,
                 n_covariates: int = 2, peak_len: int = 256, seed: int = 0, background_genes: int = 0,
                 background_peaks: int = 0, rna_per_cell: float | None = None,
                 atac_per_cell: float | None = None, background_links: int = 0) -> dict[str, list[str]]:
    """Write a full multi-gene ``.h5mu``; returns each gene's TFs in model order.

    ``background_genes``/``background_peaks`` add columns no model reads (a wide atlas),
    ``background_links`` links each background gene to that many background peaks in
    ``uns["peak_to_gene"]`` (as an atlas links every gene, modelled or not), and
    ``rna_per_cell``/``atac_per_cell`` set the nonzeros per cell (default: densities 0.3 and 0.2).
    """
    import anndata as ad
    import mudata as md
    import pandas as pd
    import scipy.sparse as sp

    md.set_options(pull_on_update=False)
    rng = np.random.default_rng(seed)
    tf_names = [f"TF{i}" for i in range(n_tfs_total)]
    gene_names = [g.name for g in genes]
    rna_vars = gene_names + [t for t in tf_names if t not in gene_names] + [f"BG{i}" for i in range(background_genes)]
    obs_names = [f"cell_{i:07d}" for i in range(n_cells)]
    obs = pd.DataFrame({f"cov{j}": rng.normal(size=n_cells).astype(np.float32) for j in range(n_covariates)},
                       index=obs_names)
    obs["celltype"] = pd.Categorical(rng.choice(["B", "Mono", "NK", "T"], n_cells))

    gene_tf = pd.DataFrame(0, index=rna_vars, columns=tf_names, dtype=np.uint8)
    model_tfs: dict[str, list[str]] = {}
    rows, peaks_all = [], []
    for gi, g in enumerate(genes):
        chosen = sorted(rng.choice(n_tfs_total, g.n_tfs, replace=False))
        gene_tf.loc[g.name, [tf_names[c] for c in chosen]] = 1
        model_tfs[g.name] = [tf_names[c] for c in chosen]
        for p in range(g.n_peaks):
            start = 1000 * (len(peaks_all) + 1)
            name = f"chr{gi + 1}-{start}-{start + 500}"
            peaks_all.append(name)
            rows.append((g.name, name, int(rng.integers(0, 500_000))))
    background = [f"chrB-{1000 * (i + 1)}-{1000 * (i + 1) + 500}" for i in range(background_peaks)]
    if background_links and background:
        for i in range(background_genes):
            for p in rng.choice(len(background), min(background_links, len(background)), replace=False):
                rows.append((f"BG{i}", background[p], int(rng.integers(0, 500_000))))
    p2g = pd.DataFrame(rows, columns=["gene", "peak", "distance"])
    peaks_all += background

    if rna_per_cell is None:
        rna_counts = sp.random(n_cells, len(rna_vars), density=0.3, format="csr", random_state=seed,
                               data_rvs=lambda k: rng.poisson(3, k) + 1).astype(np.float32)
    else:
        rna_counts = random_counts(rng, n_cells, len(rna_vars), rna_per_cell, 3)
    if atac_per_cell is None:
        atac_counts = sp.random(n_cells, len(peaks_all), density=0.2, format="csr", random_state=seed + 1,
                                data_rvs=lambda k: rng.poisson(2, k) + 1).astype(np.float32)
    else:
        atac_counts = random_counts(rng, n_cells, len(peaks_all), atac_per_cell, 2)
    rna = ad.AnnData(X=rna_counts.copy(), obs=obs.copy(), var=pd.DataFrame(index=rna_vars))
    rna.layers["counts"] = rna_counts
    rna.uns["gene_tf"] = gene_tf
    atac = ad.AnnData(X=atac_counts.copy(), obs=obs.copy(), var=pd.DataFrame(index=peaks_all))
    atac.layers["counts"] = atac_counts
    atac.uns["peaks"] = pd.DataFrame({"chr": [p.split("-")[0] for p in peaks_all],
                                      "sequence": random_sequences(rng, len(peaks_all), peak_len)},
                                     index=peaks_all)
    mdata = md.MuData({"rna": rna, "atac": atac})
    mdata.obs = obs.copy()
    mdata.uns["peak_to_gene"] = p2g
    mdata.write_h5mu(str(path))
    return model_tfs


def make_gene_models(out_dir: str | Path, genes: list[GeneSpec], n_cells: int, n_tfs_total: int,
                     n_covariates: int = 2, seed: int = 0, **arch) -> tuple[Path, list[Path]]:
    """A full ``data.h5mu`` plus one random checkpoint per gene under ``out_dir/models``."""
    out_dir = Path(out_dir)
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    data = out_dir / "data.h5mu"
    peak_len = arch.pop("peak_len", 256)
    write_mudata(data, genes, n_cells, n_tfs_total, n_covariates, peak_len, seed)
    checkpoints = []
    for i, g in enumerate(genes):
        spec = ModelSpec(n_peaks=g.n_peaks, peak_len=peak_len, n_tfs=g.n_tfs, n_covariates=n_covariates,
                         n_filters=tuple(arch.get("n_filters", (64, 32, 32, 16))), n_channels=4,
                         kernel_size=arch.get("kernel_size", 5), n_dims=arch.get("n_dims", 16),
                         n_attn_blocks=arch.get("n_attn_blocks", 1))
        checkpoints.append(save_checkpoint(random_module(spec, seed + 100 * i), out_dir / "models" / f"{g.name}.pt",
                                           n_cells=n_cells))
    return data, checkpoints
