"""``run-many``: every checkpoint of a directory against the full .h5mu, skip finished, report failures."""

from __future__ import annotations

import csv
import shutil

import h5py
import numpy as np
from typer.testing import CliRunner

from cell2net_attr.cli import app

from .conftest import COVARIATES, sha256_tree


def invoke(args):
    return CliRunner().invoke(app, args)


def _report(out_dir):
    with open(out_dir / "run-report.tsv") as fh:
        return {row["gene"]: row for row in csv.DictReader(fh, delimiter="\t")}


def test_run_many_on_fixture_directory_and_skip(upstream, tmp_path):
    before = sha256_tree(upstream)
    out = tmp_path / "out"
    r = invoke(["run-many", str(upstream / "models"), str(upstream / "full.h5mu"), "--out-dir", str(out),
                "--covariates", COVARIATES])
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    assert "[1/2] GENE0 done" in r.stderr and "[2/2] TF0 done" in r.stderr
    for gene in ("GENE0", "TF0"):
        ref = np.load(upstream / "ref" / f"{gene}.all.s100.mbi.npy")
        with h5py.File(out / f"{gene}.h5") as f:
            got = f["attributions"][:]
            assert f.attrs["gene"] == gene
        assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    first = _report(out)
    assert {g: row["status"] for g, row in first.items()} == {"GENE0": "done", "TF0": "done"}
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}

    r = invoke(["run-many", str(upstream / "models"), str(upstream / "full.h5mu"), "--out-dir", str(out),
                "--covariates", COVARIATES])
    assert r.exit_code == 0 and "[1/2] GENE0 skipped" in r.stderr and "0 done, 2 skipped" in r.stderr
    assert _report(out) == first  # the skipped genes keep the rows (and timings) of the run that made them
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")} == stamps
    assert sha256_tree(upstream) == before


def test_a_failing_gene_is_reported_and_the_rest_run(demo_atlas, tmp_path):
    data, checkpoints = demo_atlas
    models = tmp_path / "models"
    models.mkdir()
    for ck in checkpoints:
        shutil.copy(ck, models / ck.name)
    (models / "BROKEN.pt").write_bytes(b"not a checkpoint")
    shutil.copy(checkpoints[0], models / "GZ.pt")  # a gene absent from the data
    out = tmp_path / "out"
    r = invoke(["run-many", str(models), str(data), "--out-dir", str(out), "--covariates", COVARIATES,
                "--format", "npy", "-q"])
    assert r.exit_code == 2
    report = _report(out)
    assert {g: row["status"] for g, row in report.items()} == {
        "BROKEN": "failed", "GA": "done", "GB": "done", "GC": "done", "GZ": "failed"}
    assert "not a readable PyTorch checkpoint" in report["BROKEN"]["error"]
    assert "GZ" in report["GZ"]["error"]
    assert "BROKEN failed" in r.stderr and "2 failed" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == [  # each .npy with its identity sidecar; no lock, no chunks
        ".GA.npy.run.json", ".GB.npy.run.json", ".GC.npy.run.json", "GA.npy", "GB.npy", "GC.npy", "run-report.tsv"]


def test_checkpoint_lists(demo_atlas, tmp_path):
    data, checkpoints = demo_atlas
    listing = tmp_path / "genes.txt"
    listing.write_text(f"{checkpoints[2]}\n\n{checkpoints[0]}\n")
    out = tmp_path / "out"
    r = invoke(["run-many", f"@{listing}", str(checkpoints[1]), str(data), "--out-dir", str(out),
                "--covariates", COVARIATES, "--idx", "0:5", "-q"])
    assert r.exit_code == 0, r.output
    assert list(_report(out)) == ["GC", "GA", "GB"]
    with h5py.File(out / "GB.h5") as f:
        assert f["attributions"].shape == (5, 7)
    r = invoke(["run-many", str(checkpoints[0]), str(checkpoints[0]), str(data), "--out-dir", str(out),
                "--covariates", COVARIATES, "--idx", "0:5"])
    assert r.exit_code == 0, r.output  # the same file twice is one gene (already done: skipped)
    assert "1 genes: 0 done, 1 skipped" in r.stderr
    twin = tmp_path / "elsewhere" / checkpoints[0].name
    twin.parent.mkdir()
    twin.write_bytes(checkpoints[0].read_bytes())
    r = invoke(["run-many", str(checkpoints[0]), str(twin), str(data), "--out-dir", str(out)])
    assert r.exit_code == 2 and "several checkpoints" in r.stderr  # two files for one gene: which one?
    r = invoke(["run-many", str(tmp_path / "nope.pt"), str(data), "--out-dir", str(out)])
    assert r.exit_code == 2 and "not found" in r.stderr
    r = invoke(["run-many", str(checkpoints[0]), str(data), "--out-dir", str(out), "--format", "csv"])
    assert r.exit_code == 2 and "--format" in r.stderr
