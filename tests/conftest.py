"""Shared fixtures: the upstream 0.13 files in ../shared, and small synthetic atlases."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

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
