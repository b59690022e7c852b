"""The job lifecycle: an existing output is done only when it holds this very run; the API shares the driver."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import cell2net_attr
from cell2net_attr.cli import app

from .conftest import COVARIATES


def _run_many(data, models, out, *more):
    return CliRunner().invoke(app, ["run-many", *map(str, models), str(data), "--out-dir", str(out), "--n-steps", "8",
                                    *more])


def _report(out_dir):
    with open(out_dir / "run-report.tsv") as fh:
        return {row["gene"]: row for row in csv.DictReader(fh, delimiter="\t")}


def _stamps(out_dir):
    return {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir() if p.name != "run-report.tsv"}


@pytest.mark.parametrize("change,named", [
    (["--target", "peaks"], "target"),
    (["--where", "cov0 > 0", "--n-steps", "20"], "n_steps"),
    (["--where", "cov0 > 0"], "selected cells"),
    (["--covariates", "cov1,cov0"], "covariates"),
    (["--no-multiply-by-inputs"], "multiply_by_inputs"),
])
def test_an_output_of_another_run_is_refused_not_skipped(demo_atlas, tmp_path, change, named):
    data, models = demo_atlas
    out = tmp_path / "attr"
    assert _run_many(data, models, out, "--covariates", COVARIATES, "-q").exit_code == 0
    stamps, before = _stamps(out), _report(out)
    args = ["--covariates", COVARIATES, *change] if change[0] != "--covariates" else change
    r = _run_many(data, models, out, *args)
    assert r.exit_code == 2, r.output
    assert "0 done, 0 skipped" in r.stderr and "3 failed" in r.stderr
    for g in ("GA", "GB", "GC"):
        line = next(ln for ln in r.stderr.splitlines() if ln.startswith("[") and f"] {g} failed" in ln)
        assert "holds the output of another run" in line and named in line and "--overwrite" in line, line
    assert _stamps(out) == stamps  # nothing touched
    report = _report(out)
    assert all(report[g]["status"] == "failed" and named in report[g]["error"] for g in before)


def test_the_same_run_is_skipped_and_keeps_its_report_rows(demo_atlas, tmp_path):
    data, models = demo_atlas
    out = tmp_path / "attr"
    assert _run_many(data, models, out, "--covariates", COVARIATES, "--idx", "0:9", "-q").exit_code == 0
    first = _report(out)
    assert all(float(row["seconds"]) > 0 for row in first.values())
    r = _run_many(data, models, out, "--covariates", COVARIATES, "--idx", "0:9")
    assert r.exit_code == 0 and "0 done, 3 skipped" in r.stderr
    assert _report(out) == first


def test_npy_outputs_keep_their_identity_beside_them(demo_atlas, tmp_path):
    data, models = demo_atlas
    out = tmp_path / "attr"
    assert _run_many(data, models, out, "--covariates", COVARIATES, "--format", "npy", "-q").exit_code == 0
    assert _run_many(data, models, out, "--covariates", COVARIATES, "--format", "npy").stderr.count(" skipped") == 4
    r = _run_many(data, models, out, "--covariates", COVARIATES, "--format", "npy", "--n-steps", "9")
    assert r.exit_code == 2 and "n_steps is 8, this run's 9" in r.stderr
    (out / ".GA.npy.run.json").unlink()  # e.g. written by an older version: cannot tell which run made it
    r = _run_many(data, models[:1], out, "--covariates", COVARIATES, "--format", "npy")
    assert r.exit_code == 2 and "records no run identity" in r.stderr
    r = _run_many(data, models[:1], out, "--covariates", COVARIATES, "--format", "npy", "--overwrite", "-q")
    assert r.exit_code == 0 and (out / ".GA.npy.run.json").is_file()


def test_a_retrained_checkpoint_is_another_run(demo_atlas, tmp_path):
    data, models = demo_atlas
    out = tmp_path / "attr"
    assert _run_many(data, models[:1], out, "--covariates", COVARIATES, "-q").exit_code == 0
    retrained = tmp_path / "models" / models[0].name
    retrained.parent.mkdir()
    retrained.write_bytes(models[0].read_bytes())  # a copy elsewhere: the same bytes, the same run
    assert _run_many(data, [retrained], out, "--covariates", COVARIATES, "-q").exit_code == 0
    import torch

    ck = torch.load(models[0], weights_only=True)
    ck["model_state_dict"]["fc.4.bias"] += 1.0  # new weights, same file name
    torch.save(ck, retrained)
    r = _run_many(data, [retrained], out, "--covariates", COVARIATES)
    assert r.exit_code == 2 and "checkpoint (sha256)" in r.stderr


def test_the_notebook_api_runs_through_the_same_driver(demo_atlas, tmp_path):
    """tf_attr in memory equals the file `run` writes (one driver, two sinks)."""
    data, models = demo_atlas
    out = tmp_path / "GA.h5"
    r = CliRunner().invoke(app, ["run", str(models[0]), str(data), "--covariates", COVARIATES, "--n-steps", "8",
                                 "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    model = cell2net_attr.load_model(models[0], data, covariates=COVARIATES, device="cpu")
    try:
        got = cell2net_attr.tf_attr(model, n_steps=8)
    finally:
        model.close()
    with h5py.File(out) as f:
        np.testing.assert_array_equal(got, f["attributions"][:])


class _Job:
    """A job as the lifecycle sees it, with ``rows`` saved when interrupted."""

    def __init__(self, rows: int) -> None:
        self.output, self.failed, self.rows, self.discarded = object(), None, rows, False
        self.resumable = True

    def save(self) -> int:
        return self.rows

    def discard(self) -> None:
        self.discarded = True

    def write_output(self) -> None:
        pass

    def resume_note(self, saved: int) -> str:
        return f"{saved} saved"


def test_an_interrupt_counts_the_genes_that_saved_something():
    """Ctrl-C in run-many names how many genes had finished rows, not how many were running."""
    from cell2net_attr.pipeline.lifecycle import Lifecycle

    jobs = [_Job(0), _Job(512), _Job(0)]
    with pytest.raises(KeyboardInterrupt) as caught:
        with Lifecycle() as life:
            for job in jobs:
                life.add(job)
            raise KeyboardInterrupt
    assert "finished chunks of 1 of 3 genes saved" in caught.value.resume_hint
    assert not any(j.discarded for j in jobs)  # kept for --resume
    with pytest.raises(ValueError):
        with Lifecycle() as life:
            for job in jobs:
                life.add(job)
            raise ValueError("bad input")
    assert all(j.discarded for j in jobs)  # a failed job's chunks are removed
