"""Compact per-cell files: ``--dtype float16`` and ``--compression gzip|lzf``, recorded, read back, identified."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pytest

from cell2net_attr.io.reader import read_attributions

from .conftest import COVARIATES, invoke
from .test_errors import assert_clean_user_error


@pytest.fixture(scope="module")
def reference(demo_atlas, tmp_path_factory):
    """GA's float32 attributions, uncompressed."""
    data, cks = demo_atlas
    out = tmp_path_factory.mktemp("ref") / "GA.h5"
    r = invoke(["run", cks[0], data, "--covariates", COVARIATES, "--n-steps", "16", "-o", out, "-q"])
    assert r.exit_code == 0, r.output
    with h5py.File(out) as f:
        return f["attributions"][:]


def _run(demo_atlas, out, *args):
    data, cks = demo_atlas
    return invoke(["run", cks[0], data, "--covariates", COVARIATES, "--n-steps", "16", "-o", out, "-q", *args])


@pytest.mark.parametrize("suffix,dtype,compression", [(".h5", "float16", "gzip"), (".h5", "float32", "lzf"),
                                                      (".h5ad", "float16", "lzf"), (".h5ad", "float16", "none")])
def test_the_file_stores_what_was_asked_and_reads_back_as_float32(demo_atlas, reference, tmp_path, suffix, dtype,
                                                                  compression):
    out = tmp_path / f"GA{suffix}"
    assert _run(demo_atlas, out, "--dtype", dtype, "--compression", compression).exit_code == 0
    with h5py.File(out) as f:
        values = f["attributions" if suffix == ".h5" else "X"]
        assert values.dtype == np.dtype(dtype)
        assert values.compression == (None if compression == "none" else compression)
        assert values.chunks[1] == values.shape[1]  # chunked by rows
        meta = f.attrs if suffix == ".h5" else {k: f["uns/cell2net_attr"][k][()] for k in ("dtype", "compression")}
        recorded = [v.decode() if isinstance(v, bytes) else str(v) for v in (meta["dtype"], meta["compression"])]
        assert recorded == [dtype, compression]
    read = read_attributions(out)
    assert read.values.dtype == np.float32
    np.testing.assert_array_equal(read.values, reference.astype(dtype).astype(np.float32))
    if suffix == ".h5ad":
        assert ad.read_h5ad(out).X.dtype == np.dtype(dtype)


def test_npy_float16_is_allowed_compression_is_refused(demo_atlas, reference, tmp_path):
    out = tmp_path / "GA.npy"
    assert _run(demo_atlas, out, "--dtype", "float16").exit_code == 0
    got = np.load(out)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, reference.astype(np.float16))
    assert_clean_user_error(_run(demo_atlas, tmp_path / "G2.npy", "--compression", "gzip"), ["--compression", "G2.npy"])
    data, cks = demo_atlas
    r = invoke(["run-many", *cks, data, "--out-dir", tmp_path / "npy", "--covariates", COVARIATES, "--format", "npy",
                "--compression", "lzf"])
    assert_clean_user_error(r, "--compression")
    assert not (tmp_path / "npy").exists() and not (tmp_path / "G2.npy").exists()


def test_a_float32_run_never_skips_a_float16_output(demo_atlas, tmp_path):
    data, cks = demo_atlas
    args = ["run-many", *cks, data, "--out-dir", tmp_path / "out", "--covariates", COVARIATES, "--n-steps", "16"]
    assert invoke([*args, "--dtype", "float16", "-q"]).exit_code == 0
    r = invoke([*args, "--dtype", "float16", "--compression", "gzip"])
    assert r.exit_code == 2 and r.stderr.count("compression (--compression) is none, this run's gzip") == 3
    r = invoke(args)
    assert r.exit_code == 2 and r.stderr.count("value type (--dtype) is float16, this run's float32") == 3
    assert invoke([*args, "--dtype", "float16"]).exit_code == 0  # the same run: skipped


def test_summary_and_merge_of_float16_files(demo_atlas, tmp_path):
    """The summary of a float16 run is summarize's of its files; float16 gzip shards merge into the same."""
    data, cks = demo_atlas
    out, table, ref = tmp_path / "out", tmp_path / "s.tsv", tmp_path / "ref.tsv"
    r = invoke(["run-many", *cks, data, "--out-dir", out, "--covariates", COVARIATES, "--n-steps", "16", "-q",
                "--dtype", "float16", "--compression", "gzip", "--groupby", "celltype", "--summary", table])
    assert r.exit_code == 0, r.output
    assert invoke(["summarize", out, "--data", data, "--groupby", "celltype", "-o", ref, "-q"]).exit_code == 0
    from .test_run_summary import assert_same_table

    assert_same_table(table, ref)
    shards = []
    for k in range(2):
        path = tmp_path / f"GA-0000{k}-of-00002.h5"
        r = invoke(["run", cks[0], data, "--covariates", COVARIATES, "--n-steps", "16", "-o", tmp_path / "GA.h5", "-q",
                    "--shard", f"{k}/2", "--dtype", "float16", "--compression", "gzip"])
        assert r.exit_code == 0, r.output
        shards.append(path)
    assert invoke(["merge", *shards, "-o", tmp_path / "merged.h5", "-q"]).exit_code == 0
    with h5py.File(tmp_path / "merged.h5") as f, h5py.File(out / "GA.h5") as g:
        assert f["attributions"].dtype == np.float16 and f["attributions"].compression == "gzip"
        np.testing.assert_array_equal(f["attributions"][:], g["attributions"][:])


@pytest.mark.parametrize("flag", ["--dtype", "--compression"])
def test_no_per_cell_refuses_storage_flags(demo_atlas, tmp_path, flag):
    data, cks = demo_atlas
    value = "float16" if flag == "--dtype" else "gzip"
    r = invoke(["run-many", *cks, data, "--out-dir", tmp_path / "out", "--covariates", COVARIATES,
                "--summary", tmp_path / "s.tsv", "--no-per-cell", flag, value])
    assert_clean_user_error(r, flag)
