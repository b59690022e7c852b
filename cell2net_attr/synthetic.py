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


#: Log10 sequencing depths as the tutorials' covariates ``total_counts_rna_log`` and
#: ``total_counts_atac_log`` (mean, sd), then two more covariates of other scales.
DEPTH_COVARIATES = ((3.5, 0.3), (4.2, 0.25), (1.0, 0.5), (8.0, 1.0))


@dataclass(frozen=True)
class CellSource:
    """A population of cells to draw from: per-cell-type rates of each TF and peak (counts per unit depth)."""

    tf_rate: np.ndarray  # (n_types, T)
    peak_rate: np.ndarray  # (n_types, P)
    covariates: tuple[tuple[float, float], ...]

    @classmethod
    def random(cls, rng: np.random.Generator, n_peaks: int, n_tfs: int, n_covariates: int, n_types: int = 4,
               covariates: tuple[tuple[float, float], ...] = DEPTH_COVARIATES) -> CellSource:
        """Gamma-distributed base rates, each cell type scaling them by log-normal factors (sd 0.7)."""
        tf = rng.gamma(1.5, 1.5, n_tfs) * rng.lognormal(0.0, 0.7, (n_types, n_tfs))
        peak = rng.gamma(1.0, 0.8, n_peaks) * rng.lognormal(0.0, 0.7, (n_types, n_peaks))
        return cls(tf, peak, tuple(covariates[j % len(covariates)] for j in range(n_covariates)))

    def cells(self, rng: np.random.Generator, n_cells: int, depth_shift: float = 0.0,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(peak_acc (N, P), tf_exp (N, T), covariates (N, C)), float32, the cell types in contiguous blocks.

        The first two covariates are log10 RNA and ATAC depths, and the counts are Poisson with rates
        that scale with them; ``depth_shift`` adds to every cell's log10 depths (a deeper or shallower run).
        """
        n_types, n_cov = len(self.tf_rate), len(self.covariates)
        kind = np.sort(rng.integers(0, n_types, n_cells))
        cov = np.zeros((n_cells, n_cov))
        for j, (mean, sd) in enumerate(self.covariates):
            cov[:, j] = rng.normal(mean, sd, n_cells)
        cov[:, : min(n_cov, 2)] += depth_shift
        rna = cov[:, 0] - self.covariates[0][0] if n_cov else np.full(n_cells, depth_shift)
        atac = cov[:, 1] - self.covariates[1][0] if n_cov > 1 else rna
        tf = rng.poisson(10.0 ** rna[:, None] * self.tf_rate[kind])
        acc = rng.poisson(10.0 ** atac[:, None] * self.peak_rate[kind])
        return acc.astype(np.float32), tf.astype(np.float32), cov.astype(np.float32)


@torch.no_grad()
def settle_head_statistics(module: Cell2NetModule, peak_seq: np.ndarray, peak_dist: np.ndarray,
                           cells: tuple[np.ndarray, np.ndarray, np.ndarray], n_epochs: int = 40,
                           batch_size: int = 32, drift: float = 0.0, seed: int = 0) -> Cell2NetModule:
    """Give ``module`` the BatchNorm statistics that ``n_epochs`` of upstream training on ``cells`` would leave.

    Upstream trains in train mode on shuffled batches of ``batch_size`` cells (the last incomplete
    batch dropped); each batch moves every BatchNorm's running statistics, from 0 and 1. The sequence
    encoder sees the same sequences in every batch, so its statistics move towards those of the
    gene's peaks; the head's follow the batches' ``relu(fc[0](x))``, with the encoder normalised by
    each batch and the attention's dropout active. ``drift`` per batch moves the head's first Linear
    along a fixed random sign pattern, ending at the module's own weights (Adam's steps of about the
    learning rate, when gradients keep their sign). No weight changes otherwise. Returns ``module``
    in eval mode; ``cells`` are (peak_acc, tf_exp, covariates), ``peak_seq`` (P, L, 4) one-hot.
    """
    gen = torch.Generator().manual_seed(seed)
    n_cells = len(cells[0])
    per_epoch = n_cells // batch_size
    n_batches = n_epochs * per_epoch
    module.train()
    # every batch pulls the encoder's statistics towards the same target, the peaks' own: n batches
    # of momentum 0.1 from the initial (0, 1) are one step of momentum 1 - 0.9 ** n
    for bn in (m for m in module.seq_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.reset_running_stats()
        bn.momentum = 1.0 - 0.9**n_batches
    seq = torch.as_tensor(peak_seq).unsqueeze(0)
    seq_embd = module.encode_sequences(seq.expand(batch_size, -1, -1, -1))[:1]  # a batch's copies: its variance
    for bn in (m for m in module.seq_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.momentum = 0.1
        bn.num_batches_tracked.fill_(n_batches)
    first, bn = module.fc[0], module.fc[2]
    bn.reset_running_stats()
    signs_w = torch.randint(0, 2, first.weight.shape, generator=gen).float() * 2 - 1
    signs_b = torch.randint(0, 2, first.bias.shape, generator=gen).float() * 2 - 1
    acc, tf, cov = (torch.as_tensor(a) for a in cells)
    dist = torch.as_tensor(peak_dist).unsqueeze(0)
    done = 0
    for _ in range(n_epochs):
        # every cell once per epoch, in one call (the dropout masks are drawn per element either way)
        peaks = module.encode_peaks(seq_embd.expand(n_cells, -1, -1), acc)
        x = module.head_input(peaks, dist.expand(n_cells, -1), tf, cov)
        z = first(x)
        step = x @ signs_w.T + signs_b if drift else None
        perm = torch.randperm(n_cells, generator=gen)
        for b in range(per_epoch):
            rows = perm[b * batch_size:(b + 1) * batch_size]
            done += 1
            zb = z[rows] if step is None else z[rows] + (n_batches - done) * drift * step[rows]
            bn(torch.relu(zb))
    return module.eval()


@dataclass
class TrainedGene:
    """A random module whose BatchNorm statistics are those of training on ``cells[train]``."""

    module: Cell2NetModule
    peak_seq: np.ndarray
    peak_dist: np.ndarray
    source: CellSource
    cells: tuple[np.ndarray, np.ndarray, np.ndarray]
    train: np.ndarray


def trained_gene(seed: int, n_covariates: int, n_peaks: int = 6, n_tfs: int = 8, n_cells: int = 1000,
                 n_epochs: int = 40, batch_size: int = 32, drift: float = 0.0, covariate_weight: float = 1.0,
                 n_types: int = 4, covariates: tuple[tuple[float, float], ...] = DEPTH_COVARIATES) -> TrainedGene:
    """:func:`random_module` (upstream's default sizes) trained, as far as BatchNorm sees, on 80% of random cells.

    ``covariate_weight`` scales the head's covariate columns (a trained model leans on sequencing
    depth much more than a random one does).
    """
    rng = np.random.default_rng(seed)
    spec = ModelSpec(n_peaks=n_peaks, peak_len=256, n_tfs=n_tfs, n_covariates=n_covariates,
                     n_filters=(64, 32, 32, 16), n_channels=4, kernel_size=5, n_dims=16, n_attn_blocks=1)
    module = random_module(spec, seed)
    with torch.no_grad():
        module.fc[0].weight[:, spec.head_in - n_covariates:] *= covariate_weight
    peak_seq = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (n_peaks, spec.peak_len))]
    peak_dist = np.exp(-rng.integers(0, 500_000, n_peaks) / 500_000).astype(np.float32)
    source = CellSource.random(rng, n_peaks, n_tfs, n_covariates, n_types, covariates)
    cells = source.cells(rng, n_cells)
    train = np.sort(rng.permutation(n_cells)[: int(0.8 * n_cells)])
    settle_head_statistics(module, peak_seq, peak_dist, tuple(c[train] for c in cells), n_epochs, batch_size,
                           drift, seed)
    return TrainedGene(module, peak_seq, peak_dist, source, cells, train)


def write_trained_gene(out_dir: str | Path, trained: TrainedGene, gene: str = "G",
                       cells: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                       covariate_names: list[str] | None = None) -> tuple[Path, Path]:
    """A per-gene ``GENE.h5mu`` (``Cell2Net.save(save_mdata=True)``'s layout) of ``cells`` (default: the
    trained gene's own) and its checkpoint ``GENE.pt``; the covariates are obs columns ``cov0, cov1, ...``
    in the model's order unless ``covariate_names`` names them."""
    import anndata as ad
    import mudata as md
    import pandas as pd
    import scipy.sparse as sp

    md.set_options(pull_on_update=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    acc, tf, cov = trained.cells if cells is None else cells
    n, spec = len(acc), trained.module.spec
    names = covariate_names or [f"cov{j}" for j in range(cov.shape[1])]
    obs = pd.DataFrame({c: cov[:, j] for j, c in enumerate(names)}, index=[f"cell_{i:06d}" for i in range(n)])
    peaks = [f"chr1-{1000 * (p + 1)}-{1000 * (p + 1) + 500}" for p in range(spec.n_peaks)]
    tfs = [f"TF{t}" for t in range(spec.n_tfs)]
    rna = ad.AnnData(X=sp.csr_matrix(tf[:, :1]), obs=obs.copy(), var=pd.DataFrame(index=[gene]))
    rna.layers["counts"] = sp.csr_matrix(tf[:, :1])
    rna.obsm["tf"] = sp.csr_matrix(tf)
    atac = ad.AnnData(X=sp.csr_matrix(acc), obs=obs.copy(), var=pd.DataFrame(index=peaks))
    atac.layers["counts"] = sp.csr_matrix(acc)
    seqs = ["".join("ACGT"[i] for i in onehot.argmax(1)) for onehot in trained.peak_seq]
    atac.uns["peaks"] = pd.DataFrame({"chr": ["chr1"] * len(peaks), "sequence": seqs}, index=peaks)
    mdata = md.MuData({"rna": rna, "atac": atac})
    mdata.obs = obs.copy()
    mdata.uns["tfs"] = tfs
    distance = -np.log(trained.peak_dist.astype(np.float64)) * 500_000
    mdata.uns["peak_to_gene"] = pd.DataFrame({"gene": gene, "peak": peaks, "distance": distance.round()})
    data = out_dir / f"{gene}.h5mu"
    mdata.write_h5mu(str(data))
    return data, save_checkpoint(trained.module, out_dir / f"{gene}.pt", n_cells=n)
