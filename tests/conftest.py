"""Shared fixtures: the upstream 0.13 files in ../shared, and small synthetic atlases."""

from __future__ import annotations

import hashlib
import json
import os
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
