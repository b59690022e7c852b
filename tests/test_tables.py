"""summarize / activity: upstream tf_to_gene and get_top_tfs, checked against pandas/numpy computed here."""

from __future__ import annotations

import csv
import io

import h5py
import numpy as np
import pandas as pd
import pytest

from cell2net_attr.downstream import activity, groups, inputs, summary, tables_io
from cell2net_attr.errors import UserError
from cell2net_attr.io import reader

from .conftest import COVARIATES, GROUPS, invoke, sha256_tree, write_attr, write_h5mu


def reference(values, cells, tfs, gene, labels: pd.Series | None, groupby, n_tfs=None, order=None):
    """tf_to_gene written directly with pandas: groupby + mean/std(ddof 0), nlargest per group."""
    frame = pd.DataFrame(values.astype(np.float64), columns=tfs)
    if labels is None:
        groups = [(None, frame)]
    else:
        frame["_g"] = labels.loc[cells].to_numpy(dtype=object)
        frame = frame[frame["_g"].notna()]
        present = list(frame["_g"].unique())
        keys = [g for g in order if g in present]
        groups = [(k, frame[frame["_g"] == k].drop(columns="_g")) for k in keys]
    out = []
    for key, sub in groups:
        t = pd.DataFrame({"tf": tfs, "gene": gene, "mean_attr": sub.mean().to_numpy(),
                          "std_attr": sub.std(ddof=0).to_numpy(), "n_cells": len(sub),
                          "frac_pos": (sub > 0).mean().to_numpy()})
        if groupby:
            t.insert(2, groupby, key)
        if n_tfs:
            t = t.nlargest(n_tfs, "mean_attr", keep="first")
        out.append(t)
    return pd.concat(out, ignore_index=True)


def assert_same(got: pd.DataFrame, ref: pd.DataFrame):
    assert list(got.columns) == list(ref.columns)
    assert len(got) == len(ref)
    for c in got.columns:
        a, b = got[c].to_numpy(), ref[c].to_numpy()
        if c in ("mean_attr", "std_attr", "frac_pos"):
            np.testing.assert_allclose(a.astype(float), b.astype(float), rtol=1e-9, atol=1e-12)
        else:
            assert [str(x) for x in a] == [str(x) for x in b], c


def test_summary_by_category_matches_pandas(atlas):
    s = summary.summarize([atlas["genes"][g][0] for g in ("GB", "GA", "GC")], atlas["data"], "celltype")
    refs = [reference(v, c, t, g, atlas["obs"]["celltype"].astype(object), "celltype", order=GROUPS)
            for g, (_, c, t, v) in ((g, atlas["genes"][g]) for g in ("GB", "GA", "GC"))]
    assert_same(s.table, pd.concat(refs, ignore_index=True))
    # genes in input order, groups in category order (not sorted), Mono = the one-cell group
    assert list(pd.unique(s.table["gene"])) == ["GB", "GA", "GC"]
    assert list(pd.unique(s.table["celltype"].astype(str))) == ["T", "B", "NK", "Mono"]
    mono = s.table[(s.table["celltype"] == "Mono") & (s.table["gene"] == "GB")]
    _, cells, tfs, values = atlas["genes"]["GB"]
    assert (mono["n_cells"] == 1).all() and (mono["std_attr"] == 0).all()
    np.testing.assert_array_equal(mono["mean_attr"].to_numpy(), values[cells.index("c005")].astype(np.float64))
    # NaN cells left out and reported; the empty category reported
    nan_cells = {"c007", "c011"}
    assert s.missing == {g: len(nan_cells & set(atlas["genes"][g][1])) for g in s.missing}
    assert any("no 'celltype' value (NaN)" in n for n in s.notes())
    assert s.empty_groups == ["unused"] and any("unused" in n for n in s.notes())


def test_summary_agrees_with_float32_numpy_as_upstream(atlas):
    """Upstream takes np.mean / np.std of the float32 block; we sum in float64: equal to float32 precision."""
    path, cells, tfs, values = atlas["genes"]["GB"]
    s = summary.summarize([path], atlas["data"], "celltype").table
    labels = atlas["obs"]["celltype"].loc[cells].to_numpy()
    for group in ("T", "B", "NK"):
        block = values[labels == group]
        rows = s[s["celltype"] == group]
        np.testing.assert_allclose(rows["mean_attr"], np.mean(block, axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rows["std_attr"], np.std(block, axis=0), rtol=1e-5, atol=1e-6)


def test_string_column_sorted_and_none_excluded(atlas):
    s = summary.summarize([atlas["genes"]["GB"][0]], atlas["data"], "label", n_top=3)
    _, cells, tfs, values = atlas["genes"]["GB"]
    ref = reference(values, cells, tfs, "GB", atlas["obs"]["label"], "label", n_tfs=3,
                    order=["alpha", "mid", "zeta"])
    assert_same(s.table, ref)
    assert list(pd.unique(s.table["label"].astype(str))) == ["alpha", "mid", "zeta"]
    assert s.missing == {"GB": 3}


def test_whole_population_and_top(atlas):
    path, cells, tfs, values = atlas["genes"]["GC"]
    s = summary.summarize([path], n_top=2)
    assert list(s.table.columns) == ["tf", "gene", "mean_attr", "std_attr", "n_cells", "frac_pos"]
    mean = values.astype(np.float64).mean(0)
    top = np.argsort(-mean)[:2]
    assert list(s.table["tf"]) == [tfs[i] for i in top]
    np.testing.assert_allclose(s.table["std_attr"], values.astype(np.float64).std(0)[top], rtol=1e-9)
    assert (s.table["n_cells"] == len(cells)).all()


def test_ties_keep_file_order(tmp_path):
    tfs = ["A", "B", "C", "D", "E"]
    values = np.array([[1, 3, 3, 0, 3], [1, 3, 3, 0, 3]], dtype=np.float32)
    path = write_attr(tmp_path / "g.h5", "G", ["x", "y"], tfs, values)
    s = summary.summarize([path], n_top=3)
    assert list(s.table["tf"]) == ["B", "C", "E"]
    assert list(summary.summarize([path]).table["tf"]) == tfs  # without --top: file order


def test_groups_from_numbers_nullable_and_mixed():
    g = groups.groups_from_values("k", ["a", "b", "c", "d"], pd.array([10, None, 2, 10], dtype="Int64"))
    assert g.order == [2, 10] and list(g.codes) == [1, -1, 0, 1]
    g = groups.groups_from_values("k", ["a", "b", "c"], np.array([1.5, np.nan, 0.5]))
    assert g.order == [0.5, 1.5] and list(g.codes) == [1, -1, 0]
    g = groups.groups_from_values("k", ["a", "b", "c"], np.array(["b", 3, None], dtype=object))
    assert g.order == [3, "b"] and list(g.codes) == [1, 0, -1]


def test_cells_matched_by_name_not_position(tmp_path):
    obs = pd.DataFrame({"grp": pd.Categorical(["x", "y", "x", "y"])}, index=["c0", "c1", "c2", "c3"])
    data = write_h5mu(tmp_path / "d.h5mu", obs)
    # rows in another order than obs: c3 (y), c0 (x), c1 (y)
    path = write_attr(tmp_path / "g.h5", "G", ["c3", "c0", "c1"], ["T1"], [[5.0], [1.0], [3.0]])
    t = summary.summarize([path], data, "grp").table
    assert list(t["mean_attr"]) == [1.0, 4.0] and list(t["std_attr"]) == [0.0, 1.0]


def test_activity_and_top_variable_tfs_match_pandas(atlas):
    files = [atlas["genes"][g][0] for g in ("GB", "GA", "GC")]
    s = summary.summarize(files, atlas["data"], "celltype")
    act = activity.activity_matrix(s)
    ref = s.table.assign(celltype=s.table["celltype"].astype(str)).pivot_table(
        index="tf", columns="celltype", values="mean_attr", aggfunc="sum", fill_value=0.0)
    ref = ref.loc[list(pd.unique(s.table["tf"])), ["T", "B", "NK", "Mono"]]
    np.testing.assert_allclose(act.to_numpy(), ref.to_numpy(), rtol=1e-12)
    assert list(act.index) == list(ref.index) and list(act.columns) == list(ref.columns)

    for n_top, cutoff in ((3, 0.5), (2, 1.0), (5, 0.3)):
        got = activity.top_variable_tfs(act, n_top, cutoff)
        # upstream's definition, written with pandas
        var = act.var(axis=1).sort_values(ascending=False, kind="stable")
        kept = act.loc[var.index[: int(len(act) * cutoff)]]
        z = kept.apply(lambda row: (row - row.mean()) / row.std(), axis=1)
        expected = pd.DataFrame({c: z[c].nlargest(n_top).index for c in z.columns})
        assert got.shape == expected.shape
        for c in expected.columns:
            assert list(got[c]) == list(expected[c])
        assert list(got.index) == list(range(1, len(got) + 1))


def test_limit_per_gene_equals_summarize_top(atlas):
    files = [atlas["genes"][g][0] for g in ("GB", "GA")]
    full = summary.summarize(files, atlas["data"], "celltype")
    direct = summary.summarize(files, atlas["data"], "celltype", n_top=2)
    limited = summary.limit_per_gene(full, 2)
    pd.testing.assert_frame_equal(limited.table, direct.table)


def test_table_round_trip(atlas, tmp_path):
    files = [atlas["genes"][g][0] for g in ("GB", "GA", "GC")]
    s = summary.summarize(files, atlas["data"], "celltype")
    out = tmp_path / "s.csv.gz"
    tables_io.write_table(s.table, out)
    back = tables_io.read_summary([out])
    assert back.groupby == "celltype" and back.genes == ["GB", "GA", "GC"]
    np.testing.assert_allclose(activity.activity_matrix(back).to_numpy(), activity.activity_matrix(s).to_numpy(),
                               rtol=1e-7)
    assert list(activity.activity_matrix(back).columns) == ["T", "B", "NK", "Mono"]


# ------------------------------------------------------------------------------------------ the commands

def test_cli_summarize_stdout_is_data_only(atlas):
    before = sha256_tree(atlas["dir"])
    r = invoke(["summarize", atlas["dir"], "--data", atlas["data"], "--groupby", "celltype", "--top", "2"])
    assert r.exit_code == 0, r.output
    table = pd.read_csv(io.StringIO(r.stdout), sep="\t")
    assert list(table.columns) == ["tf", "gene", "celltype", "mean_attr", "std_attr", "n_cells", "frac_pos"]
    assert list(pd.unique(table["gene"])) == ["GA", "GB", "GC"]  # a directory: sorted file names
    assert (table.groupby(["gene", "celltype"]).size() <= 2).all()
    assert "note:" in r.stderr and "NaN" in r.stderr and "summarized 3 gene(s)" in r.stderr
    assert sha256_tree(atlas["dir"]) == before


def test_cli_summarize_csv_and_list_file(atlas, tmp_path):
    listing = tmp_path / "genes.txt"
    listing.write_text(f"{atlas['genes']['GC'][0]}\n\n{atlas['genes']['GA'][0]}\n")
    out = tmp_path / "s.csv"
    r = invoke(["summarize", f"@{listing}", "--out", out, "-q"])
    assert r.exit_code == 0, r.output
    assert r.stdout == "" and r.stderr == ""
    rows = list(csv.DictReader(out.open()))
    assert [r["gene"] for r in rows][0] == "GC" and {r["gene"] for r in rows} == {"GA", "GC"}
    r = invoke(["summarize", f"@{listing}", "--out", out])
    assert r.exit_code == 2 and "--overwrite" in r.stderr
    r = invoke(["summarize", "@-", "--out", "-", "-q"], input=f"{atlas['genes']['GA'][0]}\n")
    assert r.exit_code == 0 and r.stdout.startswith("tf\tgene\tmean_attr")


def test_cli_activity_outputs(atlas, tmp_path):
    r = invoke(["summarize", atlas["dir"], "--data", atlas["data"], "--groupby", "celltype",
                "--out", tmp_path / "s.tsv"])
    assert r.exit_code == 0, r.output
    r = invoke(["activity", tmp_path / "s.tsv", "--out", tmp_path / "act.tsv", "--top-out", "-", "--top", "2"])
    assert r.exit_code == 0, r.output
    act = pd.read_csv(tmp_path / "act.tsv", sep="\t", index_col=0)
    assert act.index.name == "tf" and list(act.columns) == ["T", "B", "NK", "Mono"]
    top = pd.read_csv(io.StringIO(r.stdout), sep="\t", index_col=0)
    assert list(top.columns) == list(act.columns) and len(top) == 2
    # straight from the attribution files: the same matrix
    r2 = invoke(["activity", atlas["dir"], "--data", atlas["data"], "--groupby", "celltype", "-q"])
    assert r2.exit_code == 0, r2.output
    again = pd.read_csv(io.StringIO(r2.stdout), sep="\t", index_col=0)
    np.testing.assert_allclose(again.loc[act.index].to_numpy(), act.to_numpy(), rtol=1e-6)
    assert "top 5 variable TFs" not in r2.stderr  # -q
    r3 = invoke(["activity", atlas["dir"], "--data", atlas["data"], "--groupby", "celltype", "--out",
                 tmp_path / "a3.tsv"])
    assert "top 5 variable TFs per group" in r3.stderr and "  T: " in r3.stderr


@pytest.mark.parametrize("args, message", [
    (["summarize", "{d}/nope.h5"], "attribution file not found"),
    (["summarize", "{d}/GA.h5", "--data", "{data}", "--groupby", "celltyp"], "did you mean 'celltype'"),
    (["summarize", "{d}/GA.h5", "--groupby", "celltype"], "--data: needed with --groupby"),
    (["summarize", "{d}/GA.h5", "--top", "0"], "'--top': Input should be greater than or equal to 1"),
    (["summarize", "{d}/GA.h5", "--top", "-3"], "'--top': Input should be greater than or equal to 1"),
    (["summarize", "{d}/GA.h5", "--out", "{d}/x.xlsx"], "unknown output format '.xlsx': use .tsv, .csv"),
    (["summarize", "{d}/GA.npy"], "no cell names"),
    (["summarize", "{d}/GA.h5", "{d}/GA.h5"], "gene 'GA' is also in"),
    (["summarize", "{d}/other.h5", "--data", "{data}", "--groupby", "celltype"], "not in the data's obs"),
    (["summarize", "{data}"], "this is the data file (MuData .h5mu): give it with --data, and the attribution"),
    (["activity", "{d}/GA.h5", "--data", "{data}", "--groupby", "celltype", "--top-out", "-"], "both be stdout"),
    (["activity", "{d}/GA.h5", "--data", "{data}", "--groupby", "celltype", "--var-cutoff", "0"], "--var-cutoff"),
    (["activity", "{d}/GA.h5", "--data", "{data}", "--groupby", "celltype", "--var-cutoff", "0.01"], "= 0 TFs"),
    (["activity", "{d}/GA.h5", "--var-cutoff", "1.5"], "'--var-cutoff': must be in (0, 1], got 1.5"),
    (["activity", "{d}/GA.h5", "--per-gene-top", "0"], "'--per-gene-top': Input should be greater than or equal"),
    (["activity", "{d}/GA.h5", "--top-out", "{d}/t.h5ad"], "unknown table format"),
    (["activity", "{d}/GA.h5", "{d}/s.tsv"], "not both"),
])
def test_cli_user_errors_are_one_line(atlas, args, message):
    d = atlas["dir"]
    (d / "GA.npy").write_bytes(b"")
    write_attr(d / "other.h5", "OTHER", ["c001", "zz9"], ["TF1"], [[1.0], [2.0]])
    try:
        r = invoke([a.format(d=d, data=atlas["data"]) for a in args])
    finally:
        (d / "GA.npy").unlink()
        (d / "other.h5").unlink()
    assert r.exit_code == 2, r.output
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], r.stderr
    assert not any(line.startswith("Traceback") for line in lines)


def test_bad_attribution_files(tmp_path):
    nan = write_attr(tmp_path / "nan.h5", "N", ["a", "b"], ["T"], [[1.0], [np.nan]])
    dup = write_attr(tmp_path / "dup.h5", "D", ["a", "a"], ["T"], [[1.0], [2.0]])
    with h5py.File(tmp_path / "shape.h5", "w") as f:
        f["attributions"] = np.zeros((2, 3), np.float32)
        f["obs_names"] = np.array([b"a", b"b"])
        f["tf_names"] = np.array([b"x"])
    (tmp_path / "text.h5").write_text("not hdf5")
    for path, message in ((nan, "is nan"), (dup, "'a' appears more than once"), (tmp_path / "shape.h5", "shape"),
                          (tmp_path / "text.h5", "not a readable HDF5")):
        with pytest.raises(UserError, match=message):
            reader.read_attributions(path)


def test_real_run_outputs_on_upstream_fixture(upstream, tmp_path):
    """The flow on files written by the real `run-many`, groups read here with mudata."""
    import mudata as md

    out = tmp_path / "attr"
    r = invoke(["run-many", upstream / "models", upstream / "full.h5mu", "--out-dir", out,
                "--covariates", COVARIATES, "-q"])
    assert r.exit_code == 0, r.output
    r = invoke(["summarize", out, "--data", upstream / "full.h5mu", "--groupby", "celltype", "-q"])
    assert r.exit_code == 0, r.output
    got = pd.read_csv(io.StringIO(r.stdout), sep="\t")
    obs = md.read_h5mu(upstream / "full.h5mu").obs
    refs = []
    for gene in ("GENE0", "TF0"):
        with h5py.File(out / f"{gene}.h5") as f:
            values = f["attributions"][:]
            cells = [s.decode() for s in f["obs_names"][:]]
            tfs = [s.decode() for s in f["tf_names"][:]]
        refs.append(reference(values, cells, tfs, gene, obs["celltype"].astype(object), "celltype",
                              order=sorted(obs["celltype"].unique())))
    ref = pd.concat(refs, ignore_index=True)
    assert list(got["tf"]) == list(ref["tf"]) and list(got["celltype"]) == list(ref["celltype"])
    np.testing.assert_allclose(got["mean_attr"], ref["mean_attr"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got["std_attr"], ref["std_attr"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got["frac_pos"], ref["frac_pos"], rtol=1e-6)


def test_anndata_attribution_file_reads_as_hdf5(atlas, tmp_path):
    """`run --out G.h5ad`: X = attributions, var = TFs, gene in uns["cell2net_attr"]."""
    import anndata as ad

    path, cells, tfs, values = atlas["genes"]["GA"]
    adata = ad.AnnData(X=values, obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=pd.Index(tfs, name="tf")),
                       uns={"cell2net_attr": {"gene": "GA", "n_steps": 100}})
    adata.write_h5ad(tmp_path / "GA.h5ad")
    got = summary.summarize([tmp_path / "GA.h5ad"], atlas["data"], "celltype").table
    pd.testing.assert_frame_equal(got, summary.summarize([path], atlas["data"], "celltype").table)
    assert inputs.collect_attribution_files([str(tmp_path)]) == [tmp_path / "GA.h5ad"]
