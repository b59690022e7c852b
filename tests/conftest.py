"""Shared fixtures: the upstream 0.13 files in ../shared, and small synthetic atlases."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = Path(os.environ.get("CELL2NET_FIXTURES", ROOT.parent / "shared" / "fixtures" / "upstream-0.13"))
COVARIATES = "cov0,cov1"

warnings.filterwarnings("ignore", category=FutureWarning)

#: Modules whose tests start real processes, run captum or random-model sweeps, or a SLURM cluster: kept out of
#: `make test-fast` (the edit-test loop) by the `slow` marker; `make test` runs everything.
SLOW_MODULES = {"test_cli", "test_contract", "test_downstream_kinds", "test_engine", "test_figures", "test_first_hour",
                "test_first_week", "test_fuzz", "test_locks", "test_mutagenesis", "test_peak_encoder", "test_peaks",
                "test_plots", "test_properties", "test_resume", "test_sequence_jobs", "test_sharding", "test_slurm",
                "test_summaries", "test_training_match", "test_cuda"}


def pytest_collection_modifyitems(config, items):
    """Mark every test of :data:`SLOW_MODULES` ``slow`` (others mark their slow tests themselves)."""
    for item in items:
        if item.module.__name__.rpartition(".")[2] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def _require_upstream() -> Path:
    if not (UPSTREAM / "ref" / "manifest.json").is_file():
        pytest.fail(f"upstream fixtures not found at {UPSTREAM}: the tests need ../shared/fixtures/upstream-0.13 "
                    f"beside the checkout (or CELL2NET_FIXTURES pointing at it)", pytrace=False)
    return UPSTREAM


@pytest.fixture(scope="session")
def upstream() -> Path:
    """Directory of the files written by the real cell2net 0.13."""
    return _require_upstream()


@pytest.fixture(scope="session")
def manifest(upstream: Path) -> dict:
    """``ref/manifest.json``."""
    return json.loads((upstream / "ref" / "manifest.json").read_text())


def manifest_cases() -> list[tuple[str, dict]]:
    """(gene, ref entry) pairs for parametrisation; fails loudly without fixtures."""
    path = UPSTREAM / "ref" / "manifest.json"
    if not path.is_file():
        return [pytest.param("missing", {}, marks=pytest.mark.usefixtures("upstream"), id="fixtures-missing")]
    man = json.loads(path.read_text())
    return [(g, r) for g, m in man["models"].items() for r in m["refs"]]


@pytest.fixture(scope="session")
def demo_atlas(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A small synthetic full .h5mu with three genes and their checkpoints."""
    from cell2net_attr.synthetic import GeneSpec, make_gene_models

    out = tmp_path_factory.mktemp("atlas")
    genes = [GeneSpec("GA", 9, 12), GeneSpec("GB", 5, 7), GeneSpec("GC", 3, 4)]
    return make_gene_models(out, genes, n_cells=60, n_tfs_total=16, n_covariates=2, seed=3)


def sha256_tree(*paths: Path) -> dict[str, str]:
    """sha256 of every file under the given paths (to prove inputs never change)."""
    out = {}
    for p in paths:
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def default_sigint() -> None:
    """``preexec_fn`` for a child that is sent SIGINT: a shell starts background jobs with SIGINT
    ignored, the child would inherit that, and Python then installs no KeyboardInterrupt handler."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


# --- attribution files and an obs for the downstream tests (test_tables, test_summaries) ---

GROUPS = ["T", "B", "NK", "Mono"]  # category order deliberately unsorted


def write_attr(path, gene, obs, tfs, values, **attrs):
    """An attribution file as `cell2net-attr run` writes it."""
    with h5py.File(path, "w") as f:
        f.create_dataset("attributions", data=np.asarray(values, dtype=np.float32))
        f.create_dataset("obs_names", data=np.asarray(obs, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("tf_names", data=np.asarray(tfs, dtype=object), dtype=h5py.string_dtype())
        f.attrs["gene"] = gene
        f.attrs["n_steps"] = 100
        f.attrs["method"] = "gausslegendre"
        for k, v in attrs.items():
            f.attrs[k] = v
    return path


def write_h5mu(path, obs: pd.DataFrame):
    import anndata as ad
    import mudata as md

    md.set_options(pull_on_update=False)
    mdata = md.MuData({"rna": ad.AnnData(X=np.zeros((len(obs), 1), dtype=np.float32), obs=obs.copy())})
    mdata.obs = obs.copy()
    mdata.write_h5mu(str(path))
    return path


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    """40 cells with a categorical column (unsorted categories, NaN, one-cell group, one empty category),
    a string column (with None) and a float column; three genes whose files hold cell subsets in shuffled order."""
    d = tmp_path_factory.mktemp("atlas")
    rng = np.random.default_rng(0)
    n = 40
    names = [f"c{i:03d}" for i in range(n)]
    cat = rng.choice(["T", "B", "NK"], n).astype(object)
    cat[5] = "Mono"  # the only Mono cell
    cat[[7, 11]] = None  # NaN
    strings = rng.choice(["zeta", "alpha", "mid"], n).astype(object)
    strings[[3, 4, 5]] = None
    obs = pd.DataFrame({"celltype": pd.Categorical(cat, categories=GROUPS + ["unused"]),
                        "label": strings, "score": rng.normal(size=n)}, index=names)
    data = write_h5mu(d / "data.h5mu", obs)
    genes = {}
    for g, (n_tfs, n_cells) in {"GB": (6, 40), "GA": (4, 25), "GC": (5, 33)}.items():
        cells = list(rng.permutation(names)[:n_cells])
        if "c005" not in cells:
            cells[0] = "c005"
        tfs = [f"TF{j}" for j in rng.choice(12, n_tfs, replace=False)]
        values = rng.normal(size=(n_cells, n_tfs)).astype(np.float32)
        genes[g] = (write_attr(d / f"{g}.h5", g, cells, tfs, values), cells, tfs, values)
    return {"dir": d, "data": data, "obs": obs, "genes": genes}


# --- the command line, in-process and as a real process (shared by the CLI, resume and downstream tests) ---


def invoke(args, **kw):
    """``cell2net-attr ARGS`` in-process (typer's runner); arguments may be paths."""
    from typer.testing import CliRunner

    from cell2net_attr.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], **kw)


def cli(*args: str, columns: int = 200, **kw) -> subprocess.CompletedProcess:
    """``cell2net-attr ARGS`` as its own process, in a terminal ``columns`` wide."""
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "cell2net_attr", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120, **kw)


def run_cmd(ck, data, out, *extra) -> list[str]:
    """The command line of ``cell2net-attr run`` (covariates cov0,cov1) for a subprocess."""
    return [sys.executable, "-m", "cell2net_attr", "run", str(ck), str(data), "--covariates", COVARIATES,
            "--out", str(out), *extra]


def interrupt(cmd, partial, sig, min_chunks=1):
    """Start ``cmd``, wait until it has saved ``min_chunks`` chunk files in ``partial``, send ``sig``."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if partial.is_dir() and len(list(partial.glob("chunk-*.npz"))) >= min_chunks:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=90)
    return proc.returncode, err


def write_peak_attr(path, gene, obs, peaks, values):
    """A peak attribution file as `cell2net-attr run --target peaks` writes it."""
    with h5py.File(path, "w") as f:
        f.create_dataset("attributions", data=np.asarray(values, dtype=np.float32))
        f.create_dataset("obs_names", data=np.asarray(obs, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("peak_names", data=np.asarray(peaks, dtype=object), dtype=h5py.string_dtype())
        f.attrs.update(gene=gene, target="peaks", n_steps=100, method="gausslegendre")
    return path


def assert_ig_close(got, ref, method: str = "gausslegendre", n_steps: int = 100, rtol: float = 1e-5,
                    rare: float = 0.01) -> None:
    """Two Integrated-Gradients results agree: every value within ``rtol`` x max|ref|, except rare cells (at
    most ``rare`` of the rows, at least one) that differ by at most one quadrature node's weight times the
    cell's largest attribution. Such a cell is a node that landed on a hidden ReLU unit's switch within float
    rounding, counted on one side by one engine and on the other by the other (captum does the same); the
    closed form (``method="exact"``) has no nodes and no exception."""
    from cell2net_attr.engines.quadrature import quadrature

    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape
    scale = np.abs(ref).max()
    deviation = np.abs(got - ref).reshape(len(ref), -1).max(axis=1)
    off = np.flatnonzero(deviation > rtol * scale)
    if method == "exact" or not len(off):
        assert not len(off), f"cells {off[:5].tolist()} differ by up to {deviation.max() / scale:.2e} relative"
        return
    node = max(abs(w) for w in quadrature(method, n_steps)[1])
    assert len(off) <= max(1, int(rare * len(ref))), f"{len(off)} of {len(ref)} cells differ beyond {rtol}"
    row_scale = np.maximum(np.abs(ref), np.abs(got)).reshape(len(ref), -1).max(axis=1)[off]
    assert (deviation[off] <= node * row_scale * (1 + 1e-3)).all(), (
        f"cells {off.tolist()} differ by {deviation[off].tolist()}, more than one node's weight {node:.3g}")
