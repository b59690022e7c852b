"""The notebook route without torch: get_top_tfs (upstream's name, signature and return) and tf_to_gene /
peak_to_gene on the attributions of some of the cells, checked against numpy/pandas recomputations."""

from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import cell2net_attr
from cell2net_attr.errors import UserError

from .conftest import write_attr


def upstream_get_top_tfs(df: pd.DataFrame, n_top_tfs: int, var_cutoff: float) -> pd.DataFrame:
    """get_top_tfs's steps written out with pandas: rank by variance, keep the share, z-score rows, top n."""
    var = df.var(axis=1).sort_values(ascending=False, kind="stable")
    kept = df.loc[var.index[: int(len(df) * var_cutoff)]]
    z = kept.sub(kept.mean(axis=1), axis=0).div(kept.std(axis=1), axis=0)
    return pd.DataFrame({c: z[c].sort_values(ascending=False, kind="stable").index[:n_top_tfs].tolist()
                         for c in z.columns})


def test_get_top_tfs_has_upstreams_signature():
    sig = inspect.signature(cell2net_attr.get_top_tfs)
    assert list(sig.parameters) == ["df", "n_top_tfs", "var_cutoff"]
    assert [sig.parameters[p].default for p in ("n_top_tfs", "var_cutoff")] == [5, 0.5]
    assert "get_top_tfs" in cell2net_attr.__all__


@pytest.mark.parametrize("n_top, cutoff", [(5, 0.5), (3, 1.0), (2, 0.3)])
def test_get_top_tfs_equals_the_pandas_recomputation(n_top, cutoff):
    rng = np.random.default_rng(7)
    df = pd.DataFrame(rng.normal(size=(40, 6)) * rng.uniform(0.1, 3, (40, 1)),
                      index=[f"TF{i}" for i in range(40)], columns=["B", "CD4 T", "CD8 T", "Mono", "NK", "pDC"])
    got = cell2net_attr.get_top_tfs(df, n_top_tfs=n_top, var_cutoff=cutoff)
    want = upstream_get_top_tfs(df, n_top, cutoff)
    assert isinstance(got, pd.DataFrame)
    assert list(got.index) == list(range(n_top))  # upstream's default index
    assert list(got.columns) == list(df.columns)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_names=False, check_dtype=False)


def test_get_top_tfs_refuses_what_it_cannot_rank():
    df = pd.DataFrame({"B": [1.0, 2.0]}, index=["a", "b"])
    with pytest.raises(UserError, match="df: has 1 group column"):
        cell2net_attr.get_top_tfs(df)
    with pytest.raises(UserError, match="n_top_tfs: must be a positive integer"):
        cell2net_attr.get_top_tfs(df.assign(T=[0.0, 1.0]), n_top_tfs=0)
    with pytest.raises(UserError, match=r"var_cutoff: must be in \(0, 1\]"):
        cell2net_attr.get_top_tfs(df.assign(T=[0.0, 1.0]), var_cutoff=0)
    with pytest.raises(UserError, match="finite numbers"):
        cell2net_attr.get_top_tfs(df.assign(T=[np.nan, 1.0]))


@pytest.fixture(scope="module")
def gene_mdata():
    """A per-gene MuData as upstream builds it (obs with celltype, uns['tfs'], one rna var), 50 cells."""
    import anndata as ad
    import mudata as md

    md.set_options(pull_on_update=False)
    rng = np.random.default_rng(11)
    names = [f"cell{i}" for i in range(50)]
    obs = pd.DataFrame({"celltype": pd.Categorical(rng.choice(["B", "Mono", "T"], 50))}, index=names)
    rna = ad.AnnData(X=np.zeros((50, 1), np.float32), obs=obs.copy(), var=pd.DataFrame(index=["GATA1"]))
    mdata = md.MuData({"rna": rna})
    mdata.obs = obs.copy()
    mdata.uns["tfs"] = np.array(["TAL1", "SPI1", "KLF1", "GATA2"])
    return mdata


def by_hand(mdata, values: np.ndarray, cells: list[str]) -> pd.DataFrame:
    """Mean and std (ddof 0) per cell type of the rows ``cells``, with pandas."""
    frame = pd.DataFrame(values.astype(np.float64), columns=list(mdata.uns["tfs"]))
    frame["celltype"] = mdata.obs.loc[cells, "celltype"].astype(str).to_numpy()
    grouped = frame.groupby("celltype", sort=True)
    return pd.concat({"mean_attr": grouped.mean().stack(), "std_attr": grouped.std(ddof=0).stack()}, axis=1)


def test_tf_to_gene_on_one_cell_types_cells(gene_mdata, tmp_path):
    import anndata as ad

    rng = np.random.default_rng(12)
    full = rng.normal(size=(50, 4)).astype(np.float32)
    mono = list(gene_mdata.obs_names[gene_mdata.obs["celltype"] == "Mono"])
    rows = [gene_mdata.obs_names.get_loc(c) for c in mono]
    sub = full[rows]
    with pytest.raises(UserError, match=f"attr: attr has {len(mono)} rows but mdata has 50 cells: .* pass idx="):
        cell2net_attr.tf_to_gene(gene_mdata, sub, "celltype")
    got = cell2net_attr.tf_to_gene(gene_mdata, sub, "celltype", idx=mono)
    assert set(got["celltype"].astype(str)) == {"Mono"} and (got["n_cells"] == len(mono)).all()
    want = by_hand(gene_mdata, sub, mono).loc["Mono"]
    np.testing.assert_allclose(got["mean_attr"], want.loc[list(got["tf"]), "mean_attr"], rtol=1e-6)
    np.testing.assert_allclose(got["std_attr"], want.loc[list(got["tf"]), "std_attr"], rtol=1e-6, atol=1e-7)
    # positions, a boolean mask, an AnnData naming its cells, and our own output file: the same table
    mask = (gene_mdata.obs["celltype"] == "Mono").to_numpy()
    named = ad.AnnData(X=sub, obs=pd.DataFrame(index=mono), var=pd.DataFrame(index=list(gene_mdata.uns["tfs"])))
    path = write_attr(tmp_path / "GATA1.h5", "GATA1", mono, list(gene_mdata.uns["tfs"]), sub)
    for other in (cell2net_attr.tf_to_gene(gene_mdata, sub, "celltype", idx=rows),
                  cell2net_attr.tf_to_gene(gene_mdata, sub, "celltype", idx=mask),
                  cell2net_attr.tf_to_gene(gene_mdata, named, "celltype"),
                  cell2net_attr.tf_to_gene(gene_mdata, path, "celltype")):
        pd.testing.assert_frame_equal(other, got)


def test_subsets_in_any_order_and_the_wrong_cells(gene_mdata):
    rng = np.random.default_rng(13)
    cells = list(rng.permutation(gene_mdata.obs_names)[:30])
    values = rng.normal(size=(30, 4)).astype(np.float32)
    got = cell2net_attr.tf_to_gene(gene_mdata, values, "celltype", idx=cells)
    want = by_hand(gene_mdata, values, cells)
    for _, row in got.iterrows():
        assert row["mean_attr"] == pytest.approx(want.loc[(str(row["celltype"]), row["tf"]), "mean_attr"], rel=1e-6)
    whole = cell2net_attr.tf_to_gene(gene_mdata, values, idx=cells)
    np.testing.assert_allclose(whole["mean_attr"], values.astype(np.float64).mean(0), rtol=1e-6)
    import anndata as ad

    stranger = ad.AnnData(X=values[:2], obs=pd.DataFrame(index=["cell1", "elsewhere"]),
                          var=pd.DataFrame(index=list(gene_mdata.uns["tfs"])))
    with pytest.raises(UserError, match="1 of its 2 cells are not cells of mdata .*'elsewhere'"):
        cell2net_attr.tf_to_gene(gene_mdata, stranger)
    with pytest.raises(UserError, match="idx: give idx only with an array"):
        cell2net_attr.tf_to_gene(gene_mdata, stranger, idx=[0, 1])


@pytest.mark.slow
def test_the_table_functions_do_not_import_torch():
    code = ("import sys, numpy as np, pandas as pd, cell2net_attr; "
            "cell2net_attr.get_top_tfs(pd.DataFrame(np.eye(3), index=list('abc'), columns=list('xyz')), 1); "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
