"""Data variants that real files come in: dense counts, older sequence columns, reordered modalities."""

from __future__ import annotations

import numpy as np
import pytest

import cell2net_attr

from .conftest import COVARIATES

REF = "GENE0.all.s20.mbi.npy"


def _attr(upstream, data, **kw):
    model = cell2net_attr.load_model(upstream / "models" / "GENE0.pt", data, covariates=COVARIATES, device="cpu")
    try:
        return cell2net_attr.tf_attr(model, n_steps=20, num_workers=0, **kw), model
    finally:
        model.close()


def _check(upstream, got):
    ref = np.load(upstream / "ref" / REF)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.fixture()
def full_mdata(upstream):
    import mudata as md

    return md.read_h5mu(upstream / "full.h5mu")


def _write(mdata, path):
    mdata.write_h5mu(str(path))
    return path


def test_dense_counts(full_mdata, upstream, tmp_path):
    for mod in ("rna", "atac"):
        full_mdata.mod[mod].layers["counts"] = full_mdata.mod[mod].layers["counts"].toarray()
    got, _ = _attr(upstream, _write(full_mdata, tmp_path / "dense.h5mu"))
    _check(upstream, got)


def test_older_saves_with_var_dna_sequence_and_lowercase(full_mdata, upstream, tmp_path):
    atac = full_mdata.mod["atac"]
    atac.var["dna_sequence"] = atac.uns["peaks"].loc[atac.var_names, "sequence"].str.lower().values
    del atac.uns["peaks"]
    got, model = _attr(upstream, _write(full_mdata, tmp_path / "old.h5mu"))
    _check(upstream, got)


def test_modality_rows_in_another_order(full_mdata, upstream, tmp_path):
    """Modalities are aligned to the global obs by cell name, not by row number."""
    import mudata as md

    order = np.random.default_rng(0).permutation(full_mdata.n_obs)
    rna = full_mdata.mod["rna"][order].copy()
    shuffled = md.MuData({"rna": rna, "atac": full_mdata.mod["atac"]})
    shuffled.obs = shuffled.obs.join(full_mdata.obs[["cov0", "cov1"]])
    shuffled.obs = shuffled.obs.loc[full_mdata.obs_names]  # global obs in the original order
    shuffled.uns["peak_to_gene"] = full_mdata.uns["peak_to_gene"]
    path = _write(shuffled, tmp_path / "shuffled.h5mu")
    import h5py

    with h5py.File(path) as f:  # the file really stores rna rows in another order
        assert [s.decode() for s in f["mod/rna/obs/_index"][:3]] != list(full_mdata.obs_names[:3])
    got, _ = _attr(upstream, path, idx=list(full_mdata.obs_names))
    _check(upstream, got)


def test_in_memory_mudata(full_mdata, upstream):
    got, model = _attr(upstream, full_mdata)
    _check(upstream, got)
    assert model.data.layout == "full"


@pytest.mark.slow
def test_mdata_property_is_upstream_per_gene_view(upstream):
    model = cell2net_attr.load_model(upstream / "models" / "GENE0.pt", upstream / "full.h5mu",
                                     covariates=COVARIATES, device="cpu")
    view = model.mdata
    assert list(view.uns["tfs"]) == model.tfs
    assert list(view.mod["atac"].var_names) == model.data.peaks
    assert view.mod["rna"].obsm["tf"].shape == (64, 7)
    # the view is itself a valid per-gene input
    again = cell2net_attr.load_model(upstream / "models" / "GENE0.pt", view, covariates=COVARIATES, device="cpu")
    assert again.data.layout == "per-gene"
    _check(upstream, cell2net_attr.tf_attr(again, n_steps=20))
    model.close()


def test_progress_kinds():
    import io

    from cell2net_attr.pipeline.progress import (
        LineProgress,
        NullProgress,
        RichProgress,
        make_progress,
    )

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(make_progress(quiet=True), NullProgress)
    assert isinstance(make_progress(stream=io.StringIO()), LineProgress)
    tty = Tty()
    bar = make_progress(stream=tty)
    assert isinstance(bar, RichProgress)
    bar.start(10, "G")
    bar.advance(10)
    bar.stop()
    assert "10/10" in tty.getvalue()
    lines = io.StringIO()
    p = LineProgress(lines, interval=0.0)
    p.start(4, "G")
    p.advance(2)
    p.advance(2)
    p.stop()
    text = lines.getvalue().splitlines()
    assert text[0].startswith("[G] 2/4 cells (50%)") and "cells/s" in text[0] and "ETA" in text[0]
    assert text[-1].startswith("[G] 4/4 cells (100%)")


def test_numeric_tables_read_as_anndata_reads_them(demo_atlas):
    """``rna.uns['gene_tf']`` read column by column into one matrix: the table anndata's reader gives; tables
    of other columns (strings, categories) are left to that reader."""
    from cell2net_attr.data.store import H5Store

    data, _ = demo_atlas
    store = H5Store(data)
    try:
        fast, ref = store.numeric_frame("mod/rna/uns/gene_tf"), store.read("mod/rna/uns/gene_tf")
        assert fast is not None and fast.shape == ref.shape and fast.to_numpy().dtype == ref.to_numpy().dtype
        assert (fast.to_numpy() == ref.to_numpy()).all()
        assert list(fast.columns) == [str(c) for c in ref.columns]
        assert list(fast.index) == [str(i) for i in ref.index]
        for key in ("uns/peak_to_gene", "obs", "mod/atac/uns/peaks"):
            assert store.numeric_frame(key) is None
    finally:
        store.close()
