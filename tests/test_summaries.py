"""AnnData summaries (summarize/activity --out X.h5ad), groups from an .h5ad's own obs, peak summaries
(upstream peak_to_gene) recomputed here with numpy/pandas, peak figures, and the downstream help."""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from cell2net_attr.downstream import activity, summary, tables_io

from .conftest import COVARIATES, cli, invoke, write_attr, write_h5mu, write_peak_attr

PEAK_GROUPS = ["b", "a", "c"]  # category order deliberately unsorted


def _tsv(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), sep="\t", dtype={"tf": str, "peak": str, "gene": str})


# --- AnnData outputs --------------------------------------------------------------------------------------


def test_summarize_h5ad_layout_equals_the_table(atlas, tmp_path):
    import anndata as ad

    d = atlas["dir"]
    args = [d / "GB.h5", d / "GA.h5", "--data", atlas["data"], "--groupby", "celltype", "--top", "3"]
    table = invoke(["summarize", *args, "-q"])
    r = invoke(["summarize", *args, "--out", tmp_path / "s.h5ad", "-q"])
    assert table.exit_code == 0 and r.exit_code == 0, r.output
    t = _tsv(table.stdout)
    a = ad.read_h5ad(tmp_path / "s.h5ad")
    groups = list(dict.fromkeys(t["celltype"]))
    assert list(a.obs_names) == groups == ["T", "B", "NK", "Mono"]  # category order, empty ones left out
    assert list(a.obs["celltype"]) == groups
    n_cells = t.groupby("celltype", sort=False)["n_cells"].max()
    assert list(a.obs["n_cells"]) == list(n_cells.loc[groups])
    pairs = list(dict.fromkeys(zip(t["tf"], t["gene"])))
    assert list(zip(a.var["tf"], a.var["gene"])) == pairs
    assert list(a.var_names) == [f"{tf}|{g}" for tf, g in pairs]
    assert set(a.layers) >= {"mean_attr", "std_attr", "frac_pos"}
    for name in ("mean_attr", "std_attr", "frac_pos"):
        wide = t.pivot(index="celltype", columns=["tf", "gene"], values=name).reindex(index=groups, columns=pairs)
        np.testing.assert_allclose(a.layers[name], wide.to_numpy(), rtol=1e-6, equal_nan=True)  # --top: NaN
    np.testing.assert_array_equal(a.X, a.layers["mean_attr"])
    assert np.isnan(a.layers["mean_attr"]).any()  # --top 3 of 6 TFs leaves pairs out of some groups
    assert "n_cells" in a.layers  # GA's and GB's files hold different cells
    assert a.uns["cell2net_attr"]["target"] == "tfs"


def test_activity_h5ad_layout_equals_the_tables(atlas, tmp_path):
    import anndata as ad

    d = atlas["dir"]
    base = ["activity", d / "GB.h5", d / "GA.h5", d / "GC.h5", "--data", atlas["data"], "--groupby", "celltype",
            "--top", "2", "--var-cutoff", "0.8", "-q"]
    r1 = invoke([*base, "--out", tmp_path / "a.tsv", "--top-out", tmp_path / "top.tsv"])
    r2 = invoke([*base, "--out", tmp_path / "a.h5ad"])
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    matrix = pd.read_csv(tmp_path / "a.tsv", sep="\t", index_col=0)
    top = pd.read_csv(tmp_path / "top.tsv", sep="\t", index_col=0)
    a = ad.read_h5ad(tmp_path / "a.h5ad")
    assert list(a.obs_names) == list(matrix.columns) and list(a.var_names) == list(matrix.index)
    assert list(a.obs["celltype"]) == list(matrix.columns)
    np.testing.assert_allclose(a.X, matrix.to_numpy().T, rtol=1e-6)
    values = matrix.to_numpy()
    z = (values - values.mean(1, keepdims=True)) / values.std(1, ddof=1, keepdims=True)
    np.testing.assert_allclose(a.layers["zscore"], z.T, rtol=1e-5, atol=1e-6)
    assert {g: list(v) for g, v in a.uns["top_tfs"].items()} == {g: list(top[g]) for g in top.columns}
    assert a.uns["cell2net_attr"]["var_cutoff"] == 0.8


def test_h5ad_outputs_are_atomic_and_refuse_overwrite(atlas, tmp_path):
    out = tmp_path / "s.h5ad"
    out.write_bytes(b"keep")
    r = invoke(["summarize", atlas["dir"] / "GA.h5", "--out", out])
    assert r.exit_code == 2 and "--overwrite" in r.stderr and out.read_bytes() == b"keep"
    r = invoke(["summarize", atlas["dir"] / "GA.h5", "--out", out, "--overwrite", "-q"])
    assert r.exit_code == 0 and out.read_bytes()[:4] != b"keep"
    assert [p.name for p in tmp_path.iterdir()] == ["s.h5ad"]  # no temporary file left


# --- groups from the obs an .h5ad attribution file carries ------------------------------------------------------


def test_summarize_h5ad_run_output_groups_without_data(upstream, tmp_path):
    """`run --out G.h5ad` keeps the cells' obs: --groupby reads it there, equal to giving --data."""
    r = invoke(["run", upstream / "models" / "GENE0.pt", upstream / "full.h5mu", "--covariates", COVARIATES,
                "--idx", "0:40", "--out", tmp_path / "GENE0.h5ad", "-q"])
    assert r.exit_code == 0, r.output
    own = invoke(["summarize", tmp_path / "GENE0.h5ad", "--groupby", "celltype", "-q"])
    given = invoke(["summarize", tmp_path / "GENE0.h5ad", "--groupby", "celltype", "--data",
                    upstream / "full.h5mu", "-q"])
    assert own.exit_code == 0 and given.exit_code == 0, own.output + given.output
    assert own.stdout == given.stdout and len(_tsv(own.stdout)) > 0


def test_groups_shared_by_several_h5ad_files(tmp_path):
    import anndata as ad

    rng = np.random.default_rng(3)
    for gene, cells, cats in (("G1", ["x1", "x2", "x3"], ["b", "a", "b"]), ("G2", ["x2", "x4"], ["c", "a"])):
        obs = pd.DataFrame({"grp": pd.Categorical(cats)}, index=cells)  # categories differ between the files
        ad.AnnData(X=rng.normal(size=(len(cells), 2)).astype(np.float32), obs=obs,
                   var=pd.DataFrame(index=["TF1", "TF2"]), uns={"cell2net_attr": {"gene": gene}}
                   ).write_h5ad(tmp_path / f"{gene}.h5ad")
    s = summary.summarize([tmp_path / "G1.h5ad", tmp_path / "G2.h5ad"], None, "grp")
    assert list(s.table["grp"].cat.categories) == ["a", "b", "c"]  # one sorted order over the files
    assert list(s.table["grp"]) == ["a", "a", "b", "b", "a", "a", "c", "c"]


@pytest.mark.parametrize("args, message", [
    (["{d}/GA.h5", "--groupby", "celltype"], "--data: needed with --groupby when an attribution file is HDF5"),
    (["{t}/G.h5ad", "--groupby", "celltyp"], "its obs has no column 'celltyp'"),
])
def test_groupby_without_data_errors(atlas, tmp_path, args, message):
    import anndata as ad

    ad.AnnData(X=np.ones((2, 1), np.float32), obs=pd.DataFrame({"celltype": ["a", "b"]}, index=["c1", "c2"]),
               var=pd.DataFrame(index=["TF1"])).write_h5ad(tmp_path / "G.h5ad")
    r = invoke(["summarize", *[a.format(d=atlas["dir"], t=tmp_path) for a in args]])
    assert r.exit_code == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


# --- peaks: upstream peak_to_gene ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peak_atlas(tmp_path_factory):
    """30 cells in groups b/a/c (one NaN); two genes, one with a peak whose mean is shared by all (std 0
    case lives in the single-peak gene G3)."""
    d = tmp_path_factory.mktemp("peaks")
    rng = np.random.default_rng(5)
    names = [f"c{i:02d}" for i in range(30)]
    grp = rng.choice(PEAK_GROUPS, 30).astype(object)
    grp[4] = None
    obs = pd.DataFrame({"grp": pd.Categorical(grp, categories=PEAK_GROUPS)}, index=names)
    data = write_h5mu(d / "data.h5mu", obs)
    genes = {}
    for gene, n_peaks, n_cells in (("G1", 7, 30), ("G2", 5, 22), ("G3", 1, 30)):
        cells = list(rng.permutation(names)[:n_cells])
        peaks = [f"chr1:{1000 * j}-{1000 * j + 500}" for j in rng.choice(20, n_peaks, replace=False)]
        values = (rng.normal(size=(n_cells, n_peaks)) * rng.uniform(0.1, 2, n_peaks)).astype(np.float32)
        genes[gene] = (write_peak_attr(d / f"{gene}.h5", gene, cells, peaks, values), cells, peaks, values)
    return {"dir": d, "data": data, "obs": obs, "genes": genes}


def peak_reference(values, cells, peaks, gene, labels: pd.Series | None, groupby):
    """peak_to_gene's formulas, written out with numpy/pandas (upstream's np.std, ddof 0)."""
    frames = []
    values = values.astype(np.float64)
    if labels is None:
        parts = [(None, np.ones(len(cells), bool))]
    else:
        lab = labels.loc[cells].astype(object).to_numpy()
        parts = [(g, lab == g) for g in PEAK_GROUPS if (lab == g).any()]
    for g, rows in parts:
        x = values[rows]
        mean = x.mean(0)
        sd = mean.std()
        z = (mean - mean.mean()) / sd if sd > 0 else np.zeros_like(mean)
        frame = {"peak": peaks, "gene": gene}
        if groupby:
            frame[groupby] = g
        frame.update(mean_attr=mean, std_attr=x.std(0), z_score=z, p_value=2 * (1 - norm.cdf(np.abs(z))),
                     n_cells=rows.sum(), frac_pos=(x > 0).mean(0))
        frames.append(pd.DataFrame(frame))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("grouped", [False, True])
def test_peak_summary_equals_the_formulas(peak_atlas, grouped):
    d, genes = peak_atlas["dir"], peak_atlas["genes"]
    args = ["--data", peak_atlas["data"], "--groupby", "grp"] if grouped else []
    r = invoke(["summarize", d / "G1.h5", d / "G2.h5", d / "G3.h5", *args, "-q"])
    assert r.exit_code == 0, r.output
    got = _tsv(r.stdout)
    labels = peak_atlas["obs"]["grp"] if grouped else None
    ref = pd.concat([peak_reference(v, c, p, g, labels, "grp" if grouped else None)
                     for g, (_, c, p, v) in genes.items()], ignore_index=True)
    assert list(got.columns) == list(ref.columns)
    assert list(got.columns)[:2] == ["peak", "gene"] and list(got.columns)[-6:-2] == ["mean_attr", "std_attr",
                                                                                        "z_score", "p_value"]
    for c in ("peak", "gene", *(["grp"] if grouped else [])):
        assert list(got[c].astype(str)) == list(ref[c].astype(str)), c
    for c in ("mean_attr", "std_attr", "z_score", "p_value", "frac_pos"):
        np.testing.assert_allclose(got[c], ref[c], rtol=1e-5, atol=1e-7, err_msg=c)
    np.testing.assert_array_equal(got["n_cells"], ref["n_cells"])
    g3 = got[got["gene"] == "G3"]
    assert (g3["z_score"] == 0).all() and (g3["p_value"] == 1).all()  # one peak: no spread to score against


def test_peak_summary_table_round_trip_and_refusals(peak_atlas, atlas, tmp_path):
    d = peak_atlas["dir"]
    r = invoke(["summarize", d / "G1.h5", "--data", peak_atlas["data"], "--groupby", "grp", "--out",
                tmp_path / "p.tsv", "-q"])
    assert r.exit_code == 0, r.output
    back = tables_io.read_summary([tmp_path / "p.tsv"])
    assert back.target == "peaks" and back.feature == "peak" and back.groupby == "grp"
    mixed = invoke(["summarize", d / "G1.h5", atlas["dir"] / "GA.h5"])
    assert mixed.exit_code == 2 and "holds TF attributions but" in mixed.stderr, mixed.stderr
    act = invoke(["activity", tmp_path / "p.tsv"])
    assert act.exit_code == 2 and "TF activity needs TF attributions" in act.stderr, act.stderr


def test_peak_summary_h5ad_has_peak_layers(peak_atlas, tmp_path):
    import anndata as ad

    d = peak_atlas["dir"]
    r = invoke(["summarize", d / "G1.h5", d / "G2.h5", "--data", peak_atlas["data"], "--groupby", "grp",
                "--out", tmp_path / "p.h5ad", "-q"])
    assert r.exit_code == 0, r.output
    a = ad.read_h5ad(tmp_path / "p.h5ad")
    assert list(a.obs_names) == PEAK_GROUPS and list(a.var.columns) == ["peak", "gene"]
    assert set(a.layers) >= {"mean_attr", "std_attr", "z_score", "p_value", "frac_pos"}
    t = summary.summarize([d / "G1.h5", d / "G2.h5"], peak_atlas["data"], "grp").table
    first = t[(t["gene"] == "G2") & (t["grp"] == "c")].iloc[0]
    j = list(a.var_names).index(f"{first['peak']}|G2")
    assert a.layers["z_score"][2, j] == pytest.approx(first["z_score"], rel=1e-6)


@pytest.mark.parametrize("n_genes", [1, 2])
def test_plot_draws_peaks_by_groups(peak_atlas, tmp_path, n_genes):
    d, genes = peak_atlas["dir"], ["G1", "G2"][:n_genes]
    s = summary.summarize([d / f"{g}.h5" for g in genes], peak_atlas["data"], "grp")
    rows = list(activity.activity_matrix(s).index)
    if n_genes == 1:
        assert rows == peak_atlas["genes"]["G1"][2]  # the gene's peaks, in file order
    else:
        assert rows == [f"{p} ({g})" for g in genes for p in peak_atlas["genes"][g][2]]
    for kind in ("dotplot", "heatmap"):
        out = tmp_path / f"{kind}{n_genes}.svg"
        r = invoke(["plot", *[d / f"{g}.h5" for g in genes], "--data", peak_atlas["data"], "--groupby", "grp",
                    "--kind", kind, "--out", out])
        assert r.exit_code == 0, r.output
        assert f"{kind} of {len(rows)} peaks x 3 group(s)" in r.stderr
        svg = out.read_text()
        assert "peak attribution by grp" in svg and ">peak<" in svg  # title and row axis label
        assert all(label in svg for label in rows)  # every peak labelled


# --- help, as a user reads it -----------------------------------------------------------------------------


def _help(command: str, columns: int) -> str:
    r = cli(command, "--help", columns=columns)
    assert r.returncode == 0, r.stderr
    return " ".join(r.stdout.split())


@pytest.mark.parametrize("columns", [60, 200])
@pytest.mark.parametrize("command, shown", [
    ("summarize", [".h5ad (AnnData)", "[default: (all, file order); x>=1]", "[default: (the obs of .h5ad inputs)]",
                   "[default: (one group of all cells)]", "peak_to_gene", "[default: -]"]),
    ("activity", ["[default: 5; x>=1]", "[default: (every TF); x>=1]", "0 < x <= 1. [default: 0.5]",
                  ".h5ad (AnnData", "[default: (listed on stderr)]"]),
    ("plot", ["--kind <dotplot|heatmap>", "[default: dotplot]", "--order <groups|value|input|genome>",
              "N to N x groups rows, the same in a dotplot and a heatmap",
              "[default: 150; 10<=x<=1200]", "[default: (every row); x>=1]", "[default: (gene(s) and groups)]"]),
])
def test_downstream_help_shows_choices_ranges_and_defaults(command, shown, columns):
    text = _help(command, columns)
    for item in shown:
        assert item in text, (command, item)
    assert "<bool>" not in text and not re.search(r"\s\.(\s|$)", text)  # no help text eaten as markup


# --- the notebook functions: tf_to_gene / peak_to_gene on arrays ----------------------------------------------


@pytest.mark.parametrize("gene", ["GENE0", "TF0"])
def test_peak_to_gene_api_on_upstream_reference(upstream, gene):
    """upstream peak_attr's output (all cells) summarized with the per-gene .h5mu, against the formulas."""
    import mudata as md

    import cell2net_attr

    md.set_options(pull_on_update=False)
    mdata = md.read_h5mu(upstream / "models" / f"{gene}.h5mu")
    attr = np.load(upstream / "ref" / "peaks" / f"{gene}.peaks.all.s50.mbi.npy")
    got = cell2net_attr.peak_to_gene(mdata, attr, "celltype")
    peaks = [str(p) for p in mdata.uns["peak_to_gene"]["peak"]]
    labels = mdata.obs["celltype"].astype(object).to_numpy()
    rows = []
    for g in sorted(set(labels)):
        x = attr[labels == g].astype(np.float64)
        mean = x.mean(0)
        z = (mean - mean.mean()) / mean.std()
        rows.append(pd.DataFrame({"peak": peaks, "gene": gene, "celltype": g, "mean_attr": mean, "std_attr": x.std(0),
                                  "z_score": z, "p_value": 2 * (1 - norm.cdf(np.abs(z)))}))
    ref = pd.concat(rows, ignore_index=True)
    assert list(got["peak"]) == list(ref["peak"]) and list(got["celltype"].astype(str)) == list(ref["celltype"])
    for c in ("mean_attr", "std_attr", "z_score", "p_value"):
        np.testing.assert_allclose(got[c], ref[c], rtol=1e-5, atol=1e-9, err_msg=c)
    whole = cell2net_attr.peak_to_gene(mdata, attr)
    assert len(whole) == len(peaks) and "celltype" not in whole.columns


def test_tf_to_gene_api_equals_summarize(upstream, tmp_path):
    import cell2net_attr

    model = cell2net_attr.load_model(upstream / "models" / "GENE0.pt", upstream / "models" / "GENE0.h5mu",
                                     covariates=COVARIATES)
    attr = cell2net_attr.tf_attr(model, n_steps=20, method="exact")
    got = cell2net_attr.tf_to_gene(model, attr, "celltype", n_tfs=3)
    names = [str(n) for n in model.mdata.obs_names]
    path = write_attr(tmp_path / "GENE0.h5", "GENE0", names, model.tfs, attr)
    want = summary.summarize([path], upstream / "models" / "GENE0.h5mu", "celltype", 3).table
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-6)
    with pytest.raises(Exception, match="expected 64 cells x"):
        cell2net_attr.tf_to_gene(model, attr[:, :2])


def test_an_h5ad_with_sparse_x_is_read(tmp_path):
    """AnnData may store X sparse (a group, not a dataset): the reader takes its shape from the attributes."""
    import anndata as ad
    import scipy.sparse as sp

    from cell2net_attr.io.reader import read_attributions

    x = np.array([[0.0, 1.5], [2.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    path = tmp_path / "G.h5ad"
    ad.AnnData(X=sp.csr_matrix(x), obs=pd.DataFrame(index=["c0", "c1", "c2"]),
               var=pd.DataFrame(index=["TF1", "TF2"]), uns={"cell2net_attr": {"gene": "G", "target": "tfs"}}
               ).write_h5ad(path)
    got = read_attributions(path)
    assert got.gene == "G" and got.features == ["TF1", "TF2"] and np.array_equal(got.values, x)
