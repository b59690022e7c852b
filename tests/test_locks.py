"""One writer per output: concurrent runs, a killed lock holder, overlapping run-many, with real processes."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from cell2net_attr.errors import UserError
from cell2net_attr.io.lock import OutputLock, lock_path

from .conftest import COVARIATES, default_sigint

SLOW = ("--engine", "captum", "--batch-size", "1", "--n-steps", "24", "-q")


def _run(ck, data, out, *extra):
    return [sys.executable, "-m", "cell2net_attr", "run", str(ck), str(data), "--covariates", COVARIATES,
            "--out", str(out), *extra]


def _wait_for(path, proc, seconds=90):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_second_run_on_the_same_output_stops_at_once(demo_atlas, tmp_path):
    data, cks = demo_atlas
    out = tmp_path / "a.h5"
    first = subprocess.Popen(_run(cks[0], data, out, *SLOW), stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "CELL2NET_ATTR_CHUNK_ROWS": "4"})
    try:
        _wait_for(tmp_path / ".a.h5.partial", first)
        second = subprocess.run(_run(cks[0], data, out, *SLOW, "--resume"), capture_output=True, text=True,
                                timeout=120)
        lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
        assert second.returncode == 2 and len(lines) == 1, second.stderr
        assert "another run is writing this output" in lines[0] and f"pid {first.pid}" in lines[0]
        assert str(out) in lines[0]
        assert (tmp_path / ".a.h5.partial").is_dir()  # the first run's chunks were not touched
        _, err = first.communicate(timeout=180)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    ref = tmp_path / "ref.h5"
    subprocess.run(_run(cks[0], data, ref, *SLOW), check=True)
    with h5py.File(out) as a, h5py.File(ref) as b:
        assert np.abs(a["attributions"][:] - b["attributions"][:]).max() <= 1e-6 * np.abs(b["attributions"][:]).max()
    assert not lock_path(out).exists()


def test_lock_of_a_killed_run_is_taken_over(demo_atlas, tmp_path):
    data, cks = demo_atlas
    out = tmp_path / "a.h5"
    proc = subprocess.Popen(_run(cks[0], data, out, *SLOW), stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CELL2NET_ATTR_CHUNK_ROWS": "4"}, preexec_fn=default_sigint)
    _wait_for(lock_path(out), proc)
    _wait_for(tmp_path / ".a.h5.partial", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert lock_path(out).exists()  # SIGKILL leaves it behind
    r = subprocess.run(_run(cks[0], data, out, *SLOW, "--resume"), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "stale lock" in r.stderr and out.is_file() and not lock_path(out).exists()


def test_overlapping_run_many_share_the_genes(demo_atlas, tmp_path):
    data, cks = demo_atlas
    cmd = [sys.executable, "-m", "cell2net_attr", "run-many", *map(str, cks), str(data), "--out-dir",
           str(tmp_path), "--covariates", COVARIATES, "--engine", "captum", "--batch-size", "2", "--n-steps", "12",
           "--idx", "0:20", "-q"]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)]
    _wait_for(lock_path(tmp_path / f"{cks[0].stem}.h5"), procs[0])
    procs.append(subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True))
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    for ck in cks:
        with h5py.File(tmp_path / f"{ck.stem}.h5") as f:
            assert f["attributions"].shape[0] == 20 and np.isfinite(f["attributions"][:]).all()
    assert not list(tmp_path.glob(".*.lock")) and not list(tmp_path.glob(".*.partial"))
    with open(tmp_path / "run-report.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert {r["gene"] for r in rows} == {ck.stem for ck in cks}


def test_lock_holders_are_respected_or_found_stale(tmp_path):
    out = tmp_path / "x.h5"
    lock = lock_path(out)
    here = socket.gethostname()
    lock.write_text(json.dumps({"pid": os.getpid(), "host": here, "started": time.time()}))  # alive: us
    with pytest.raises(UserError, match=f"pid {os.getpid()} on host {here}"):
        OutputLock(out).acquire()
    lock.write_text(json.dumps({"pid": 1, "host": "another-node", "started": time.time()}))  # cannot tell: respect
    assert "another-node" in OutputLock(out).try_acquire()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": here, "started": time.time()}))
    with pytest.warns(UserWarning, match="stale"):
        taken = OutputLock(out)
        assert taken.try_acquire() is None
    taken.release()
    assert not lock.exists()
    lock.write_text("{not json")  # half-written just now: respected; old: stale
    assert OutputLock(out).try_acquire() == "an unreadable lock file"
    os.utime(lock, (time.time() - 120, time.time() - 120))
    with pytest.warns(UserWarning, match="stale"):
        assert OutputLock(out).try_acquire() is None
