"""The downstream commands tell the tool's own outputs apart (by their encoding-type, or a table's columns), take
what fits, refuse the rest naming what the file is and which command takes it; errors that name the user's
mistake (one group, the data or a checkpoint in the wrong place, a continuous --groupby column, a typo);
the group codes of files that share their cells are reused explicitly."""

from __future__ import annotations

import io
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest

from cell2net_attr.errors import suggest
from cell2net_attr.downstream import activity, groups, summary, tables_io
from cell2net_attr.io import reader
from cell2net_attr.io import schema
from cell2net_attr.io.schema import UNS_KEY

from .conftest import COVARIATES, cli, invoke, write_attr


def ok(args):
    r = invoke(args)
    assert r.exit_code == 0, r.output
    return r


def refused(args, *messages):
    r = invoke(args)
    assert r.exit_code == 2, r.output
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(m in last for m in messages), r.stderr
    return last


@pytest.fixture(scope="module")
def outputs(atlas, tmp_path_factory):
    """The tool's own downstream outputs of the atlas: summaries, activity and top-TF tables."""
    d = tmp_path_factory.mktemp("outputs")
    base = [atlas["dir"] / f"{g}.h5" for g in ("GB", "GA", "GC")] + ["--data", atlas["data"], "--groupby", "celltype"]
    ok(["summarize", *base, "--out", d / "summary.tsv", "-q"])
    ok(["summarize", *base, "--out", d / "summary.h5ad", "-q"])
    ok(["activity", d / "summary.tsv", "--out", d / "activity.tsv", "--top-out", d / "top.tsv", "-q"])
    ok(["activity", d / "summary.tsv", "--out", d / "activity.h5ad", "-q"])
    return d


# --- 1. every output says what it is ------------------------------------------------------------------------


def test_outputs_declare_their_kind(outputs, upstream, tmp_path):
    import anndata as ad

    assert ad.read_h5ad(outputs / "summary.h5ad").uns[UNS_KEY]["encoding-type"] == "cell2net-attr-summary"
    assert ad.read_h5ad(outputs / "activity.h5ad").uns[UNS_KEY]["encoding-type"] == "cell2net-attr-activity"
    assert reader.declared_kind(outputs / "summary.h5ad") == "summary"
    assert reader.declared_kind(outputs / "activity.h5ad") == "activity"
    for fmt in ("h5", "h5ad"):
        ok(["run", upstream / "models" / "GENE0.pt", upstream / "full.h5mu", "--covariates", COVARIATES,
            "--idx", "0:8", "--out", tmp_path / f"GENE0.{fmt}", "-q"])
        assert reader.declared_kind(tmp_path / f"GENE0.{fmt}") == "attributions"
    assert reader.declared_kind(upstream / "full.h5mu") == "mudata"
    assert set(schema.ENCODING_TYPES) == {"attributions", "summary", "activity", "mutagenesis", "variants"}


@pytest.mark.parametrize("name, messages", [
    ("summary.h5ad", ["this is a summary", "written by `summarize`", "summarize takes attribution files",
                      "give it to activity or plot"]),
    ("summary.tsv", ["this is a summary", "give it to activity or plot"]),
    ("activity.h5ad", ["this is an activity table (TF x group), written by `activity`", "plot --kind heatmap"]),
    ("activity.tsv", ["this is an activity table (TF x group)"]),
    ("top.tsv", ["top variable TFs per group, written by `activity --top-out`"]),
])
def test_summarize_refuses_the_tools_own_tables(outputs, name, messages):
    refused(["summarize", outputs / name], f"{outputs / name}: ", *messages)


def test_a_mutagenesis_output_is_named_as_such(upstream, tmp_path):
    out = tmp_path / "m.h5"
    ok(["mutagenesis", upstream / "models" / "GENE0.pt", upstream / "full.h5mu", "--covariates", COVARIATES,
        "--peak", "0", "-o", out, "-q"])
    assert reader.declared_kind(out) == "mutagenesis"
    refused(["summarize", out], "this is a saturation mutagenesis output", "written by `mutagenesis`")


def test_summarize_names_the_data_and_a_checkpoint(atlas, upstream, outputs):
    refused(["summarize", atlas["data"]], "this is the data file (MuData .h5mu): give it with --data, and the "
                                          "attribution files as arguments")
    refused(["summarize", atlas["data"], "--groupby", "celltype"], "this is the data file")  # not '--data: needed'
    refused(["summarize", upstream / "models" / "GENE0.pt"], "this is a model checkpoint")
    ga = atlas["dir"] / "GA.h5"
    last = refused(["summarize", ga, "--data", upstream / "models" / "GENE0.pt", "--groupby", "celltype"],
                   "--data: ", "is a model checkpoint (.pt), not data: --data takes the .h5mu")
    assert "checkpoint first" not in last
    refused(["summarize", ga, "--data", outputs / "summary.h5ad", "--groupby", "celltype"],
            "--data: ", "is a summary", "not data")


def test_a_summary_in_a_run_many_directory_is_skipped(atlas, outputs, tmp_path):
    attr = tmp_path / "attr"
    attr.mkdir()
    for g in ("GA", "GB"):
        shutil.copy(atlas["dir"] / f"{g}.h5", attr)
    args = ["summarize", attr, "--data", atlas["data"], "--groupby", "celltype", "-q"]
    clean = ok(args).stdout
    shutil.copy(outputs / "summary.h5ad", attr)
    shutil.copy(outputs / "activity.h5ad", attr)
    r = ok(args)
    assert r.stdout == clean  # no gene 'summary' with 4 cells
    assert "warning: skipped" in r.stderr and "summary.h5ad: a summary" in r.stderr


def test_activity_reads_a_summary_h5ad_like_its_table(outputs):
    from_table = pd.read_csv(io.StringIO(ok(["activity", outputs / "summary.tsv", "-q"]).stdout), sep="\t",
                             index_col=0)
    from_h5ad = pd.read_csv(io.StringIO(ok(["activity", outputs / "summary.h5ad", "-q"]).stdout), sep="\t",
                            index_col=0)
    assert list(from_h5ad.index) == list(from_table.index) and list(from_h5ad.columns) == list(from_table.columns)
    np.testing.assert_allclose(from_h5ad.to_numpy(), from_table.to_numpy(), rtol=1e-6, atol=1e-7)  # float32 layers
    for name in ("activity.tsv", "activity.h5ad"):
        refused(["activity", outputs / name], "this is an activity table", "activity takes summaries")


def test_summary_h5ad_reads_back_as_its_table(atlas, tmp_path):
    """Rows absent from a group (--top) have no row, and the order is the table's."""
    base = [atlas["dir"] / "GB.h5", atlas["dir"] / "GA.h5", "--data", atlas["data"], "--groupby", "celltype",
            "--top", "3", "-q"]
    ok(["summarize", *base, "--out", tmp_path / "s.tsv"])
    ok(["summarize", *base, "--out", tmp_path / "s.h5ad"])
    t, h = (tables_io.read_summary([tmp_path / n]) for n in ("s.tsv", "s.h5ad"))
    assert h.groupby == t.groupby == "celltype" and h.genes == t.genes and h.target == "tfs"
    assert list(h.table.columns) == list(t.table.columns)
    for c in ("tf", "gene", "celltype", "n_cells"):
        assert list(h.table[c].astype(str)) == list(t.table[c].astype(str)), c
    for c in ("mean_attr", "std_attr", "frac_pos"):
        np.testing.assert_allclose(h.table[c], t.table[c], rtol=1e-6, atol=1e-7)


def test_plot_draws_an_activity_table_as_a_heatmap(outputs, tmp_path):
    matrix = pd.read_csv(outputs / "activity.tsv", sep="\t", index_col=0)
    for name in ("activity.tsv", "activity.h5ad"):
        r = ok(["plot", outputs / name, "--kind", "heatmap", "--out", tmp_path / f"{name}.svg"])
        # every group, not one 'all cells' column of the groups taken as cells
        assert f"heatmap of {len(matrix)} TFs x {matrix.shape[1]} group(s)" in r.stderr
        svg = (tmp_path / f"{name}.svg").read_text()
        assert all(f">{g}<" in svg for g in matrix.columns) and "all cells" not in svg
        refused(["plot", outputs / name, "--out", tmp_path / "d.png"], "activity table has no fraction of cells",
                "--kind heatmap")
    refused(["plot", outputs / "top.tsv", "--out", tmp_path / "t.png"], "top variable TFs per group",
            "plot takes summaries, activity tables")


def test_tables_on_stdin_are_told_apart_too(outputs, tmp_path):
    summary_text = (outputs / "summary.tsv").read_text()
    activity_text = (outputs / "activity.tsv").read_text()
    r = invoke(["activity", "-", "-q"], input=summary_text)
    assert r.exit_code == 0 and r.stdout == (outputs / "activity.tsv").read_text().replace("\r", ""), r.output
    r = invoke(["plot", "-", "--kind", "heatmap", "--out", tmp_path / "a.png"], input=activity_text)
    assert r.exit_code == 0 and "heatmap of" in r.stderr and "x 4 group(s)" in r.stderr, r.output
    r = invoke(["activity", "-"], input=activity_text)
    assert r.exit_code == 2 and "-: this is an activity table" in r.stderr


def test_plot_reads_a_summary_h5ad(outputs, tmp_path):
    for name in ("summary.tsv", "summary.h5ad"):
        r = ok(["plot", outputs / name, "--top", "2", "--out", tmp_path / f"{name}.png"])
        assert "dotplot of" in r.stderr and "x 4 group(s) over 3 gene(s)" in r.stderr
    assert r.stderr.split(" -> ")[0] == invoke(["plot", outputs / "summary.tsv", "--top", "2", "--out",
                                               tmp_path / "again.png"]).stderr.split(" -> ")[0]


# --- 3. errors that name the user's mistake ----------------------------------------------------------------


def test_activity_of_one_group_writes_the_matrix(atlas, tmp_path):
    ga = atlas["genes"]["GA"]
    r = ok(["activity", ga[0], "--out", tmp_path / "a.tsv", "--top-out", tmp_path / "top.tsv"])
    assert "no variance across groups" in r.stderr and "--top-out is not written" in r.stderr
    assert "--groupby" not in r.stderr.replace("(--groupby gives groups)", "")  # not blamed
    got = pd.read_csv(tmp_path / "a.tsv", sep="\t", index_col=0)
    assert list(got.columns) == ["all cells"] and list(got.index) == ga[2]
    np.testing.assert_allclose(got["all cells"], ga[3].astype(np.float64).mean(0), rtol=1e-6)
    assert not (tmp_path / "top.tsv").exists()
    ok(["activity", ga[0], "--out", tmp_path / "a.h5ad", "-q"])
    import anndata as ad

    a = ad.read_h5ad(tmp_path / "a.h5ad")
    assert a.shape == (1, len(ga[2])) and "zscore" not in a.layers and len(a.uns["top_tfs"]) == 0


def test_a_continuous_groupby_column_is_refused(atlas, tmp_path):
    last = refused(["summarize", atlas["dir"] / "GA.h5", "--data", atlas["data"], "--groupby", "score"],
                   "--groupby: obs column 'score' is numeric with 40 distinct values over 40 cells",
                   "choose a categorical column")
    assert "'celltype'" in last and "'label'" in last
    with pytest.raises(Exception, match="numeric with 200 distinct values"):
        groups.groups_from_values("x", [f"c{i}" for i in range(200)], np.arange(200.0))
    few = groups.groups_from_values("k", [f"c{i}" for i in range(200)], np.arange(200) % 12)  # 12 clusters
    assert few.order == list(range(12))


def test_var_cutoff_range_is_one_in_help_and_check():
    r = cli("activity", "--help", columns=200)
    text = " ".join(r.stdout.split())
    assert "0 < x <= 1" in text and "0.0<=x" not in text
    for value in ("0", "-0.5", "1.01"):
        r = cli("activity", "x.tsv", "--var-cutoff", value)
        assert r.returncode == 2 and "'--var-cutoff': must be in (0, 1]" in r.stderr, r.stderr


@pytest.mark.parametrize("name, first", [
    ("celtype", "celltype"), ("CellType", "celltype"), ("CELLTYPE", "celltype"), ("cel", "celltype"),
    ("id", "ID"), ("Leiden", "leiden"), ("cell_typ", "cell_type"),
])
def test_suggest_puts_the_closest_first(name, first):
    columns = ["cell_type_fine", "cell_type", "celltype_coarse", "CellCycle", "celltype", "leiden", "ID", "n_counts"]
    hint = suggest(name, columns)
    assert hint.startswith(f" (did you mean {first!r}"), hint
    assert suggest("zzz", columns) == ""


# --- 6. group codes reused explicitly ------------------------------------------------------------------------


def test_codes_for_has_no_hidden_state():
    g = groups.groups_from_values("k", ["a", "b", "c"], pd.Categorical(["x", "y", "x"]))
    assert set(vars(g)) == {"column", "names", "codes", "order"}
    names = pd.Index(["c", "a"])
    first = g.codes_for(names, "f")
    first[:] = -1  # the caller's copy: the next answer must not change
    assert list(g.codes_for(names, "f")) == [0, 0]


def test_files_sharing_their_cells_match_them_once(atlas, tmp_path, monkeypatch):
    _, cells, tfs, values = atlas["genes"]["GB"]
    paths = [write_attr(tmp_path / f"G{i}.h5", f"G{i}", cells, tfs, values * (i + 1)) for i in range(3)]
    paths.append(atlas["genes"]["GA"][0])  # other cells
    calls = []
    real = groups.Groups.codes_for
    monkeypatch.setattr(groups.Groups, "codes_for", lambda self, n, s: calls.append(s) or real(self, n, s))
    s = summary.summarize(paths, atlas["data"], "celltype")
    assert calls == [paths[0], paths[3]]
    monkeypatch.undo()
    for i, p in enumerate(paths):  # the reused codes give each file its own correct table
        alone = summary.summarize([p], atlas["data"], "celltype").table
        mine = s.table[s.table["gene"] == alone["gene"].iloc[0]].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, alone)
    act = activity.activity_matrix(s)
    assert act.shape[1] == 4


def test_declared_kind_of_files_that_say_nothing(tmp_path):
    plain = write_attr(tmp_path / "g.h5", "G", ["a"], ["T"], [[1.0]])  # written before outputs declared themselves
    assert reader.declared_kind(plain) == ""
    assert summary.summarize([plain]).genes == ["G"]
    (tmp_path / "x.h5").write_text("not hdf5")
    assert reader.declared_kind(tmp_path / "x.h5") == ""
    with h5py.File(tmp_path / "legacy.h5ad", "w") as f:  # a summary AnnData written before encoding-type
        f.attrs["encoding-type"] = "anndata"
        f.create_group(f"uns/{UNS_KEY}")["kind"] = "summary"
    assert reader.declared_kind(tmp_path / "legacy.h5ad") == "summary"
