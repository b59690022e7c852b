"""``run-many --summary``: the table ``summarize`` gives from the per-cell outputs, made while computing."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest

from cell2net_attr.downstream.groups import groups_from_values
from cell2net_attr.downstream.moments import GroupMoments
from cell2net_attr.downstream.summary import gene_stats
from cell2net_attr.io.reader import Attributions

from .conftest import COVARIATES, default_sigint, invoke

ORDER = ["T", "B", "NK", "Mono", "unused"]  # unsorted, with a category no cell has
NAN_CELLS = [3, 7, 20]


@pytest.fixture(scope="module")
def grouped(demo_atlas, tmp_path_factory):
    """The demo atlas with its celltype reordered, an unused category and cells without a group (NaN)."""
    data, checkpoints = demo_atlas
    d = tmp_path_factory.mktemp("grouped")
    copy = shutil.copy(data, d / "data.h5mu")
    with h5py.File(copy, "r+") as f:
        old = [c.decode() for c in f["obs/celltype/categories"][:]]
        codes = np.array([ORDER.index(old[c]) for c in f["obs/celltype/codes"][:]], dtype=np.int8)
        codes[NAN_CELLS] = -1
        attrs = {k: dict(f[f"obs/celltype/{k}"].attrs) for k in ("categories", "codes")}
        del f["obs/celltype/categories"], f["obs/celltype/codes"]
        f["obs/celltype"].create_dataset("categories", data=np.array(ORDER, dtype=object), dtype=h5py.string_dtype())
        f["obs/celltype"].create_dataset("codes", data=codes)
        for k, v in attrs.items():
            f[f"obs/celltype/{k}"].attrs.update(v)
    models = d / "models"
    models.mkdir()
    for ck in checkpoints:
        shutil.copy(ck, models / ck.name)
    return copy, models


def _run_many(data, models, out_dir, *args):
    return invoke(["run-many", *([models] if not isinstance(models, list) else models), data, "--out-dir", out_dir,
                   "--covariates", COVARIATES, "--n-steps", "16", "-q", *args])


def _read(path):
    if str(path).endswith(".h5ad"):
        a = ad.read_h5ad(path)
        return a
    return pd.read_csv(path, sep="\t", dtype={"tf": str, "peak": str, "gene": str, "celltype": str},
                       keep_default_na=False)


def assert_same_table(got, want):
    """Two summaries agree: the same rows and text columns, numbers within 1e-5."""
    a, b = _read(got), _read(want)
    if isinstance(a, ad.AnnData):
        assert list(a.obs_names) == list(b.obs_names) and list(a.var_names) == list(b.var_names)
        pd.testing.assert_frame_equal(a.obs, b.obs)
        pd.testing.assert_frame_equal(a.var, b.var)
        assert sorted(a.layers) == sorted(b.layers)
        for name in a.layers:
            np.testing.assert_allclose(a.layers[name], b.layers[name], rtol=1e-5, atol=1e-8)
        assert a.uns["cell2net_attr"]["encoding-type"] == b.uns["cell2net_attr"]["encoding-type"]
        return
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for c in a.columns:
        if pd.api.types.is_float_dtype(b[c]):
            np.testing.assert_allclose(a[c].to_numpy(), b[c].to_numpy(), rtol=1e-5, atol=1e-8, err_msg=c)
        else:
            assert a[c].tolist() == b[c].tolist(), c


def test_moments_over_blocks_equal_the_whole_file_statistics():
    """Sums added block by block, in any split, give summarize's statistics of the whole file."""
    rng = np.random.default_rng(1)
    values = rng.normal(size=(90, 5)).astype(np.float32)
    values[:, 3] = -0.0  # a TF of zero expression
    labels = rng.choice(["a", "b", "c"], 90).astype(object)
    labels[[4, 9]] = None
    names = [f"c{i}" for i in range(90)]
    groups = groups_from_values("g", names, pd.Series(pd.Categorical(labels, ["c", "a", "b", "z"])))
    want = gene_stats(Attributions(None, "G", pd.Index(names), list("vwxyz"), values), groups)
    moments = GroupMoments.zeros(4, 5)
    for a, b in [(0, 1), (1, 40), (40, 41), (41, 90)]:
        part = GroupMoments.zeros(4, 5)
        part.add(groups.codes[a:b], values[a:b])
        moments.merge(GroupMoments.from_arrays(part.arrays()))
    got = moments.stats("G", list("vwxyz"), groups.order)
    assert got.groups == want.groups == ["c", "a", "b"] and got.n_missing == want.n_missing == 2
    np.testing.assert_array_equal(got.n_cells, want.n_cells)
    np.testing.assert_array_equal(got.n_pos, want.n_pos)
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-12)
    np.testing.assert_allclose(got.std, want.std, rtol=1e-9)
    assert np.signbit(got.mean[:, 3]).all()  # -0.0 as summarize gives it


@pytest.mark.parametrize("suffix", [".tsv", ".h5ad"])
@pytest.mark.parametrize("target", ["tfs", "peaks"])
def test_the_summary_equals_summarize_on_the_per_cell_outputs(grouped, tmp_path, target, suffix):
    data, models = grouped
    out, table = tmp_path / "attr", tmp_path / f"summary{suffix}"
    where = "celltype != 'NK'"  # a category present in the data but not in the selected cells
    r = _run_many(data, models, out, "--target", target, "--where", where, "--groupby", "celltype",
                  "--summary", table)
    assert r.exit_code == 0, r.output
    assert "left out of every gene" in r.stderr and "NK, unused" in r.stderr  # the notes summarize gives
    ref = tmp_path / f"ref{suffix}"
    r = invoke(["summarize", out, "--data", data, "--groupby", "celltype", "--out", ref, "-q"])
    assert r.exit_code == 0, r.output
    assert_same_table(table, ref)


def test_top_and_no_groupby(grouped, tmp_path):
    data, models = grouped
    for args, ref_args in ([("--top", "2", "--groupby", "celltype"), ("--top", "2", "--groupby", "celltype")],
                           [(), ()]):
        out, table, ref = tmp_path / "attr", tmp_path / "s.tsv", tmp_path / "ref.tsv"
        assert _run_many(data, models, out, "--summary", table, "--overwrite", *args).exit_code == 0
        r = invoke(["summarize", out, "--data", data, "--out", ref, "--overwrite", "-q", *ref_args])
        assert r.exit_code == 0, r.output
        assert_same_table(table, ref)


def test_no_per_cell_writes_the_table_alone_and_a_rerun_skips(grouped, tmp_path):
    data, models = grouped
    full, alone = tmp_path / "full.tsv", tmp_path / "alone.tsv"
    assert _run_many(data, models, tmp_path / "a", "--groupby", "celltype", "--summary", full).exit_code == 0
    r = _run_many(data, models, tmp_path / "b", "--groupby", "celltype", "--summary", alone, "--no-per-cell")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["run-report.tsv"]
    assert not list(tmp_path.glob(".alone.tsv.partial")) and not list(tmp_path.glob(".alone.tsv.lock"))
    assert alone.read_text() == full.read_text()
    stamp = alone.stat().st_mtime_ns
    r = invoke(["run-many", models, data, "--out-dir", tmp_path / "b", "--covariates", COVARIATES, "--n-steps", "16",
                "--groupby", "celltype", "--summary", alone, "--no-per-cell"])
    assert r.exit_code == 0 and "0 done, 3 skipped" in r.stderr, r.output
    assert alone.read_text() == full.read_text() and alone.stat().st_mtime_ns != stamp


def test_a_rerun_adds_the_missing_genes_and_reads_existing_outputs(grouped, tmp_path):
    data, models = grouped
    cks = sorted(models.glob("*.pt"))
    ref = tmp_path / "ref.tsv"
    assert _run_many(data, models, tmp_path / "ref", "--groupby", "celltype", "--summary", ref).exit_code == 0
    table, out = tmp_path / "s.tsv", tmp_path / "attr"
    assert _run_many(data, [cks[0], cks[2]], out, "--groupby", "celltype", "--summary", table).exit_code == 0
    assert sorted(pd.unique(_read(table)["gene"])) == ["GA", "GC"]
    r = _run_many(data, [cks[1]], out)  # GB's per-cell output only, no summary
    assert r.exit_code == 0
    r = invoke(["run-many", models, data, "--out-dir", out, "--covariates", COVARIATES, "--n-steps", "16",
                "--groupby", "celltype", "--summary", table])
    assert r.exit_code == 0 and "0 done, 3 skipped" in r.stderr, r.output  # GB's sums read from its file
    assert_same_table(table, ref)


@pytest.mark.parametrize("change,named", [(["--n-steps", "8"], "n_steps"), (["(no --groupby)"], "groupby"),
                                          (["--top", "1"], "top"), (["--where", "cov0 > 0"], "selected cells")])
def test_a_table_of_another_run_is_refused_not_appended_to(grouped, tmp_path, change, named):
    data, models = grouped
    table = tmp_path / "s.tsv"
    args = ["--groupby", "celltype", "--summary", table]
    assert _run_many(data, models, tmp_path / "a", *args).exit_code == 0
    before = table.read_bytes()
    if change[0] == "(no --groupby)":
        args, change = args[2:], []
    r = _run_many(data, models, tmp_path / "b", *args, *change, "--no-per-cell")
    assert r.exit_code == 2 and r.stderr.count("error:") == 1, r.output
    assert "holds the summary of another run" in r.stderr and named in r.stderr and str(table) in r.stderr
    assert table.read_bytes() == before and not (tmp_path / "b" / "GA.h5").exists()


def test_sharded_summaries_merge_into_the_unsharded_table(grouped, tmp_path):
    data, models = grouped
    ref = tmp_path / "ref.h5ad"
    assert _run_many(data, models, tmp_path / "ref", "--groupby", "celltype", "--summary", ref,
                     "--no-per-cell").exit_code == 0
    for k in range(2):
        r = _run_many(data, models, tmp_path / "out", "--groupby", "celltype", "--summary", tmp_path / "s.tsv",
                      "--no-per-cell", "--shard", f"{k}/2")
        assert r.exit_code == 0, r.output
    shards = sorted(tmp_path.glob("s-0000*-of-00002.tsv"))
    assert [p.name for p in shards] == ["s-00000-of-00002.tsv", "s-00001-of-00002.tsv"]
    r = invoke(["merge", shards[0], "--out", tmp_path / "m.tsv"])
    assert r.exit_code == 2 and "missing shard(s) 1/2" in r.stderr
    r = invoke(["merge", *shards[::-1], "--out", tmp_path / "merged.h5ad"])
    assert r.exit_code == 0, r.output
    assert_same_table(tmp_path / "merged.h5ad", ref)


def _parts(table):
    return list(table.parent.glob(f".{table.name}.partial/.*.partial/chunk-*.npz"))


def test_an_interrupted_gene_resumes_to_the_uninterrupted_table(grouped, tmp_path, monkeypatch):
    data, models = grouped
    slow = ("--engine", "captum", "--batch-size", "1", "--n-steps", "24", "--idx", "0:30", "-q", "--groupby", "celltype",
            "--no-per-cell", "--covariates", COVARIATES)
    ref = tmp_path / "ref.tsv"
    cmd = [sys.executable, "-m", "cell2net_attr", "run-many", str(models / "GA.pt"), str(data), *slow]
    subprocess.run([*cmd, "--out-dir", str(tmp_path / "ref"), "--summary", str(ref)], check=True)
    monkeypatch.setenv("CELL2NET_ATTR_CHUNK_ROWS", "4")
    table = tmp_path / "s.tsv"
    proc = subprocess.Popen([*cmd, "--out-dir", str(tmp_path / "out"), "--summary", str(table)],
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None and len(_parts(table)) < 2:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 143 and "--resume" in err, err
    assert not table.exists() and _parts(table)
    done = subprocess.run([*cmd, "--out-dir", str(tmp_path / "out"), "--summary", str(table), "--resume"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_same_table(table, ref)
    assert [p.name for p in tmp_path.glob(".s.tsv.*")] == [".s.tsv.run.json"]  # no chunks, no lock


@pytest.mark.parametrize("args,flag", [(["--groupby", "celltype"], "--groupby"), (["--no-per-cell"], "--no-per-cell"),
                                       (["--top", "3"], "--top"), (["--summary", "-"], "--summary"),
                                       (["--summary", "s.parquet"], "s.parquet")])
def test_summary_flags_without_what_they_need(grouped, tmp_path, monkeypatch, args, flag):
    from .test_errors import assert_clean_user_error

    monkeypatch.chdir(tmp_path)
    data, models = grouped
    r = _run_many(data, models, tmp_path / "out", *args)
    assert_clean_user_error(r, flag)
    assert not (tmp_path / "out").exists()
