"""Interrupted runs (SIGTERM, SIGINT, SIGKILL) resume with --resume to the uninterrupted result."""

from __future__ import annotations

import signal
import subprocess

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from cell2net_attr.cli import app

from .conftest import COVARIATES, interrupt, run_cmd, sha256_tree


@pytest.fixture(scope="module")
def slow_run(demo_atlas, tmp_path_factory):
    """A run slow enough to interrupt (captum engine, one cell per batch) and its uninterrupted result."""
    data, checkpoints = demo_atlas
    ck = checkpoints[0]
    ref = tmp_path_factory.mktemp("ref") / "ref.h5"
    args = ("--engine", "captum", "--batch-size", "1", "--n-steps", "8", "--idx", "0:24", "--delta", "-q")
    subprocess.run(run_cmd(ck, data, ref, *args), check=True)
    return ck, data, args, ref


def _same(a, b):
    with h5py.File(a) as fa, h5py.File(b) as fb:
        x, y = fa["attributions"][:], fb["attributions"][:]
        assert list(fa["obs_names"][:]) == list(fb["obs_names"][:])
        assert np.abs(x - y).max() <= 1e-6 * np.abs(y).max()
        assert np.abs(fa["convergence_delta"][:] - fb["convergence_delta"][:]).max() <= 1e-6


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGKILL, -9)])
def test_interrupt_then_resume_equals_uninterrupted(slow_run, tmp_path, monkeypatch, sig, code):
    monkeypatch.setenv("CELL2NET_ATTR_CHUNK_ROWS", "4")  # save often, so there is something to resume
    ck, data, args, ref = slow_run
    before = sha256_tree(data, ck)
    out = tmp_path / "a.h5"
    partial = tmp_path / ".a.h5.partial"
    rc, err = interrupt(run_cmd(ck, data, out, *args), partial, sig)
    assert rc == code, err
    assert not out.exists() and "Traceback" not in err
    if sig != signal.SIGKILL:
        assert "--resume" in err and "cells saved" in err
    saved = sorted(p.name for p in partial.glob("chunk-*.npz"))
    assert saved and saved[0].startswith("chunk-000000000000-")
    r = subprocess.run(run_cmd(ck, data, out, *args, "--resume"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    _same(out, ref)
    assert not partial.exists()
    assert sha256_tree(data, ck) == before


def test_rerun_without_resume_starts_over(slow_run, tmp_path, monkeypatch):
    monkeypatch.setenv("CELL2NET_ATTR_CHUNK_ROWS", "4")
    ck, data, args, ref = slow_run
    out = tmp_path / "a.h5"
    rc, _ = interrupt(run_cmd(ck, data, out, *args), tmp_path / ".a.h5.partial", signal.SIGTERM)
    assert rc == 143
    r = subprocess.run(run_cmd(ck, data, out, *args), capture_output=True, text=True)
    assert r.returncode == 0 and "discarding the partial output" in r.stderr
    _same(out, ref)


def _resume_with_other_options(slow_run, tmp_path, monkeypatch, change):
    """Interrupt a run, then resume it with its options changed by ``change``: the CLI result."""
    monkeypatch.setenv("CELL2NET_ATTR_CHUNK_ROWS", "4")
    ck, data, args, _ = slow_run
    out = tmp_path / "a.h5"
    rc, _ = interrupt(run_cmd(ck, data, out, *args), tmp_path / ".a.h5.partial", signal.SIGTERM)
    assert rc == 143
    return CliRunner().invoke(app, ["run", str(ck), str(data), "--covariates", COVARIATES, "--out", str(out),
                                    *change(args), "--resume"])


def test_resume_refuses_a_partial_of_another_run(slow_run, tmp_path, monkeypatch):
    r = _resume_with_other_options(slow_run, tmp_path, monkeypatch, lambda args: [a if a != "8" else "9"
                                                                                   for a in args])
    assert r.exit_code == 2 and "different run" in r.stderr and "n_steps" in r.stderr
    assert (tmp_path / ".a.h5.partial").is_dir()  # nothing of the earlier run was destroyed


def test_resume_with_nothing_to_resume(demo_atlas, tmp_path):
    data, checkpoints = demo_atlas
    r = CliRunner().invoke(app, ["run", str(checkpoints[2]), str(data), "--covariates", COVARIATES,
                                 "--out", str(tmp_path / "a.npy"), "--resume"])
    assert r.exit_code == 0 and "nothing to resume" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.npy.run.json", "a.npy"]  # the .npy and its run identity


def test_resume_refuses_other_delta(slow_run, tmp_path, monkeypatch):
    """Cells saved without deltas are never completed with made-up ones: --delta is part of the identity."""
    r = _resume_with_other_options(slow_run, tmp_path, monkeypatch, lambda args: [a for a in args if a != "--delta"])
    assert r.exit_code == 2 and "different run" in r.stderr and "delta" in r.stderr
    assert not (tmp_path / "a.h5").exists()


def test_damaged_chunk_is_recomputed(slow_run, tmp_path, monkeypatch):
    monkeypatch.setenv("CELL2NET_ATTR_CHUNK_ROWS", "4")
    ck, data, args, ref = slow_run
    out = tmp_path / "a.h5"
    partial = tmp_path / ".a.h5.partial"
    rc, _ = interrupt(run_cmd(ck, data, out, *args), partial, signal.SIGTERM, min_chunks=2)
    assert rc == 143
    first = sorted(partial.glob("chunk-*.npz"))[0]
    raw = bytearray(first.read_bytes())
    raw[-40] ^= 0xFF  # one flipped byte inside the archive: it still parses, its checksum fails
    first.write_bytes(bytes(raw))
    r = subprocess.run(run_cmd(ck, data, out, *args, "--resume"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "damaged" in r.stderr and first.name in r.stderr
    _same(out, ref)


def test_the_last_rows_go_straight_into_the_output(demo_atlas, tmp_path, monkeypatch):
    """Rows still in memory at the end are written to the output, not saved as a chunk and read back
    (no fsync); with a chunk every 7 rows, the saved chunks and the rest make the same output."""
    import os

    data, checkpoints = demo_atlas
    synced, fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or fsync(fd))
    args = ["run", str(checkpoints[0]), str(data), "--covariates", COVARIATES, "--delta", "-q"]
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "one.h5")])
    assert r.exit_code == 0, r.output
    assert synced == []
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "many.h5"), "--batch-size", "7", "--chunk-rows", "7"])
    assert r.exit_code == 0, r.output
    assert synced, "no chunk was saved: the comparison would prove nothing"
    assert not list(tmp_path.glob(".*partial*"))
    with h5py.File(tmp_path / "one.h5") as a, h5py.File(tmp_path / "many.h5") as b:
        assert np.array_equal(a["attributions"][:], b["attributions"][:])
        assert np.array_equal(a["convergence_delta"][:], b["convergence_delta"][:])
