"""Which bases drive a gene: ``mutagenesis`` and ``variants`` through the CLI and the API, against upstream
0.13's own outputs (``ref/ism``), and their outputs, resumption and errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pandas as pd
import pytest

import cell2net_attr
from cell2net_attr.io.mutagenesis_io import read_mutagenesis

from .conftest import COVARIATES, UPSTREAM, invoke

#: Upstream's effects are float32 means of rates about 1e-3 apart: its own rounding puts them up to 1.6e-5
#: of their largest value from the exact (float64) result this tool computes (engines/mutagenesis.py).
ISM_TOL = 5e-5


def _ism_cases():
    path = UPSTREAM / "ref" / "ism" / "manifest.json"
    if not path.is_file():
        return [pytest.param("missing", {}, marks=pytest.mark.usefixtures("upstream"), id="fixtures-missing")]
    man = json.loads(path.read_text())
    return [pytest.param(g, r, id=r["file"]) for g, m in man["models"].items() for r in m["refs"]]


def _close(got, want):
    assert got.shape == want.shape and np.abs(got - want).max() <= ISM_TOL * np.abs(want).max()


@pytest.mark.parametrize("layout", ["per-gene", "full"])
@pytest.mark.parametrize("gene,ref", _ism_cases())
def test_api_reproduces_upstream_saturation_mutagenesis(upstream, gene, ref, layout):
    data = upstream / "models" / f"{gene}.h5mu" if layout == "per-gene" else upstream / "full.h5mu"
    model = cell2net_attr.load_model(upstream / "models" / f"{gene}.pt", data, covariates=COVARIATES, device="cpu")
    try:
        got, seq = cell2net_attr.saturation_mutagenesis(model, ref["peak"], return_seq=True, **ref["kwargs"])
    finally:
        model.close()
    _close(got, np.load(upstream / "ref" / "ism" / ref["file"]))
    assert got.dtype == np.float64 and seq.shape == (4, 256) and set(np.unique(seq)) <= {0.0, 1.0}


def test_cli_npy_is_upstreams_array_and_h5_holds_every_group(upstream, tmp_path):
    ck, data = upstream / "models" / "GENE0.pt", upstream / "full.h5mu"
    npy = tmp_path / "g.npy"
    r = invoke(["mutagenesis", ck, data, "--covariates", COVARIATES, "--peak", "chr1-2000-2500", "-o", npy,
                "--return-seq", "-q"])
    assert r.exit_code == 0, r.output
    _close(np.load(npy), np.load(upstream / "ref" / "ism" / "GENE0.ism.p1.default.npy"))
    assert (tmp_path / ".g.npy.run.json").is_file() and np.load(tmp_path / "g.seq.npy").shape == (4, 256)
    h5 = tmp_path / "g.h5"
    r = invoke(["mutagenesis", ck, data, "--covariates", COVARIATES, "--peaks", "all", "--groupby", "celltype",
                "-o", h5, "-q"])
    assert r.exit_code == 0, r.output
    result = read_mutagenesis(h5)
    assert result.groups == ["B", "Mono", "NK", "T"] and result.effect.shape == (4, 4, 4, 256)
    model = cell2net_attr.load_model(ck, data, covariates=COVARIATES, device="cpu")
    try:  # each group's effect is the API's on that group's cells
        cells = model.data.obs_table(np.arange(model.data.n_cells))
        for g, label in enumerate(result.groups):
            idx = list(cells.index[cells["celltype"] == label])
            assert result.n_cells[g] == len(idx)
            np.testing.assert_allclose(result.effect[g, 3],
                                       cell2net_attr.saturation_mutagenesis(model, 3, idx=idx), rtol=0, atol=1e-9)
        stored = result.mean_alt[0, 1][model.data.peak_seq[1].T.astype(bool)]
        assert np.isnan(stored).all()  # the stored base's rate is mean_ref
    finally:
        model.close()
    with h5py.File(h5) as f:
        assert f.attrs["encoding-type"] == "cell2net-attr-mutagenesis" and f.attrs["kind"] == "mutagenesis"
        assert [s.decode() for s in f["sequences"][:]][1][:5] == result.sequences[1][:5]


def test_h5ad_is_anndata_groups_by_mutations(upstream, tmp_path):
    import anndata

    out = tmp_path / "g.h5ad"
    r = invoke(["mutagenesis", upstream / "models" / "TF0.pt", upstream / "full.h5mu", "--covariates", COVARIATES,
                "--peak", "0", "--peak", "2", "--groupby", "celltype", "-o", out, "-q", "--no-smoothing"])
    assert r.exit_code == 0, r.output
    a = anndata.read_h5ad(out)
    assert a.shape == (4, 2 * 4 * 256) and list(a.var.columns) == ["peak", "position", "base", "ref_base"]
    assert "mean_alt" in a.layers and a.uns["cell2net_attr"]["encoding-type"] == "cell2net-attr-mutagenesis"
    assert a.var_names[0].endswith(":0:A") and (a.var["position"] < 256).all()


def test_an_existing_output_and_another_runs_parts_are_refused(demo_atlas, tmp_path):
    data, cks = demo_atlas
    out = tmp_path / "m.h5"
    args = ["mutagenesis", cks[2], data, "--covariates", COVARIATES, "--peak", "0", "-o", out, "-q"]
    assert invoke(args).exit_code == 0
    r = invoke(args)
    assert r.exit_code == 2 and "--overwrite" in r.stderr
    partial = tmp_path / ".m.h5.partial"
    partial.mkdir()
    (partial / "meta.json").write_text('{"kind": "mutagenesis", "window_size": 9}')
    r = invoke([*args, "--overwrite", "--resume"])
    assert r.exit_code == 2 and "different run" in r.stderr


@pytest.mark.parametrize("args,named", [
    (["--peak", "chr9-1-2"], "--peak"),
    (["--peak", "99"], "--peak"),
    (["--peak", "0", "--peak", "0"], "more than once"),
    (["--peaks", "some"], "--peaks"),
    (["--peak", "0", "--window-size", "999"], "--window-size"),
    (["--peaks", "all", "-o", "{tmp}/x.npy"], ".npy"),
    (["--peak", "0", "--groupby", "celltype", "-o", "{tmp}/x.npy"], ".npy"),
    (["--peak", "0", "--groupby", "cov0"], "continuous"),
    (["--peak", "0", "--engine", "captum"], "--engine"),
])
def test_bad_input_is_one_line_and_writes_nothing(demo_atlas, tmp_path, args, named):
    data, cks = demo_atlas
    out = tmp_path / "out"
    out.mkdir()
    args = [a.replace("{tmp}", str(out)) for a in args]
    if "-o" not in args:
        args += ["-o", str(out / "m.h5")]
    r = invoke(["mutagenesis", cks[0], data, "--covariates", COVARIATES, *args])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], r.stderr
    assert list(out.iterdir()) == []


def test_interrupted_mutagenesis_resumes_at_the_next_peak(tmp_path):
    """Killed after its first peak, a rerun with --resume computes the others only, and equals a whole run."""
    from cell2net_attr.synthetic import GeneSpec, make_gene_models

    data, (ck,) = make_gene_models(tmp_path, [GeneSpec("GL", 6, 5)], n_cells=100, n_tfs_total=8, seed=4)
    whole, out = tmp_path / "whole.h5", tmp_path / "m.h5"
    base = [sys.executable, "-m", "cell2net_attr", "mutagenesis", str(ck), str(data), "--covariates", COVARIATES,
            "--peaks", "all", "--threads", "1"]
    subprocess.run([*base, "-o", str(whole), "-q"], check=True)
    proc = subprocess.Popen([*base, "-o", str(out)], stderr=subprocess.PIPE, text=True)
    partial = tmp_path / ".m.h5.partial"
    while proc.poll() is None and not list(partial.glob("peak-*.npz")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "peaks saved" in err and "--resume" in err and not out.exists()
    r = subprocess.run([*base, "-o", str(out), "--resume", "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a, b = read_mutagenesis(whole), read_mutagenesis(out)
    np.testing.assert_array_equal(a.effect, b.effect)
    assert not partial.exists()


def _variant_table(upstream, path, mutate=None):
    """The fixtures' variants (manifest rows) as a VCF, positions by upstream's add_peaks rule."""
    man = json.loads((upstream / "ref" / "ism" / "manifest.json").read_text())
    lines = ["##fileformat=VCFv4.2", "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    for gene, m in man["models"].items():
        for i, row in enumerate(m["variants"]["rows"]):
            chrom, start, end = row["peak"].split("-")
            pos = (int(start) + int(end)) // 2 - 128 + row["offset"] + 1
            ref = mutate(row["ref"], row["alt"]) if mutate and i == 0 else row["ref"]
            lines.append(f"{chrom}\t{pos}\t{gene}_{i}\t{ref}\t{row['alt']}\t.\t.\t.")
    lines.append("chr1\t99999999\tfar\tA\tG\t.\t.\t.")
    lines.append("chr1\t1010\tindel\tAT\tA\t.\t.\t.")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_variants_reproduce_upstream_predict_per_cell_and_per_group(upstream, tmp_path):
    import anndata

    vcf = _variant_table(upstream, tmp_path / "v.vcf")
    out = tmp_path / "cells"
    r = invoke(["variants", upstream / "models", upstream / "full.h5mu", "--variants", vcf, "--out-dir", out,
                "--covariates", COVARIATES, "--format", "h5ad"])
    assert r.exit_code == 0, r.output
    assert "skipped far (line" in r.stderr and "outside every modelled peak window" in r.stderr
    assert "skipped indel" in r.stderr
    report = pd.read_csv(out / "variants-skipped.tsv", sep="\t")
    assert set(report["id"]) == {"far", "indel"}
    for gene in ("GENE0", "TF0"):
        ref = np.load(upstream / "ref" / "ism" / f"{gene}.variants.npz")
        a = anndata.read_h5ad(out / f"{gene}.variants.h5ad")
        assert list(a.obs_names) == list(ref["obs_names"]) and a.n_vars == len(ref["pred_alt"])
        np.testing.assert_allclose(a.layers["ref"][:, 0], ref["pred_ref"], rtol=1e-6)
        np.testing.assert_allclose(a.layers["alt"], ref["pred_alt"].T, rtol=1e-6)
        np.testing.assert_allclose(a.X, ref["pred_alt"].T - ref["pred_ref"][:, None], atol=1e-6)
    tables = tmp_path / "tables"
    r = invoke(["variants", upstream / "models", upstream / "full.h5mu", "--variants", vcf, "--out-dir", tables,
                "--covariates", COVARIATES, "--groupby", "celltype", "-q"])
    assert r.exit_code == 0, r.output
    t = pd.read_csv(tables / "GENE0.variants.tsv", sep="\t")
    ref = np.load(upstream / "ref" / "ism" / "GENE0.variants.npz")
    model = cell2net_attr.load_model(upstream / "models" / "GENE0.pt", upstream / "full.h5mu", covariates=COVARIATES)
    types = model.data.obs_table(np.arange(64))["celltype"].astype(str).to_numpy()
    model.close()
    for _, row in t.iterrows():
        cells = types == row["celltype"]
        v = int(row["variant"].split("_")[1])
        assert row["n_cells"] == cells.sum()
        assert abs(row["mean_alt"] - ref["pred_alt"][v, cells].mean()) < 1e-6
        assert abs(row["delta"] - (ref["pred_alt"][v, cells] - ref["pred_ref"][cells]).mean()) < 1e-6
    r = invoke(["variants", upstream / "models", upstream / "full.h5mu", "--variants", vcf, "--out-dir", tables,
                "--covariates", COVARIATES, "--groupby", "celltype"])
    assert r.exit_code == 0 and "0 done, 2 skipped" in r.stderr


def test_variant_errors(upstream, tmp_path):
    models, data = upstream / "models", upstream / "full.h5mu"
    wrong = _variant_table(upstream, tmp_path / "w.vcf",  # the first variant's REF is another base than stored
                           mutate=lambda ref, alt: next(b for b in "ACGT" if b not in (ref, alt)))
    r = invoke(["variants", models, data, "--variants", wrong, "--out-dir", tmp_path / "o", "--covariates",
                COVARIATES, "-q"])
    assert r.exit_code == 0 and "another genome build?" in r.stderr and "GENE0_0" in r.stderr
    junk = tmp_path / "junk.vcf"
    junk.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\nchr1\tx12\t.\tA\tG\n")
    r = invoke(["variants", models, data, "--variants", junk, "--out-dir", tmp_path / "j", "--covariates", COVARIATES])
    assert r.exit_code == 2 and "line 3" in r.stderr and r.stderr.count("\n") == 1 and not (tmp_path / "j").exists()
    none = tmp_path / "none.tsv"
    none.write_text("chrom\tpos\tref\talt\nchr1\t5\tA\tG\n")
    r = invoke(["variants", models, data, "--variants", none, "--out-dir", tmp_path / "n", "--covariates",
                COVARIATES])
    assert r.exit_code == 2 and "none of its 1 records could be scored" in r.stderr


def test_score_variants_api_equals_the_command(upstream, tmp_path):
    vcf = _variant_table(upstream, tmp_path / "v.vcf")
    model = cell2net_attr.load_model(upstream / "models" / "TF0.pt", upstream / "full.h5mu", covariates=COVARIATES)
    try:
        table, skipped = cell2net_attr.score_variants(model, vcf)
    finally:
        model.close()
    assert invoke(["variants", upstream / "models" / "TF0.pt", upstream / "full.h5mu", "--variants", vcf,
                   "--out-dir", tmp_path / "o", "--covariates", COVARIATES, "-q"]).exit_code == 0
    cli = pd.read_csv(tmp_path / "o" / "TF0.variants.tsv", sep="\t")
    np.testing.assert_allclose(table["delta"].to_numpy(), cli["delta"].to_numpy(), rtol=1e-6, atol=1e-12)
    assert "far" in set(skipped["id"])


def test_variants_shards_split_the_genes(upstream, tmp_path):
    vcf = _variant_table(upstream, tmp_path / "v.vcf")
    out = tmp_path / "o"
    for k in (0, 1):
        r = invoke(["variants", upstream / "models", upstream / "full.h5mu", "--variants", vcf, "--out-dir", out,
                    "--covariates", COVARIATES, "--shard", f"{k}/2", "-q"])
        assert r.exit_code == 0, r.output
        report = pd.read_csv(out / f"run-report-0000{k}-of-00002.tsv", sep="\t")
        assert list(report["gene"]) == [["GENE0", "TF0"][k]]
    assert sorted(p.name for p in out.glob("*.variants.tsv")) == ["GENE0.variants.tsv", "TF0.variants.tsv"]
