"""``--where``: cells chosen by their obs row, checked against pandas' own ``query``; never arbitrary Python."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from cell2net_attr._compat import read_elem
from cell2net_attr.cli import app
from cell2net_attr.data.store import H5Store
from cell2net_attr.data.where import where_mask
from cell2net_attr.errors import UserError

from .conftest import COVARIATES

EXPRESSIONS = ["celltype == 'B'", "celltype == 'B' and cov0 > 0", "celltype in ['B', 'NK'] | (cov1 <= -0.5)",
               "not (cov0 > 0)", "0 < cov0 < 1", "celltype != 'T' & ~(cov1 > 1)", "cov0 >= -0.25 or cov1 < 0"]


@pytest.fixture(scope="module")
def full(upstream):
    path = upstream / "full.h5mu"
    with h5py.File(path) as f:
        obs = read_elem(f["obs"])
    return path, obs


@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_where_equals_pandas_query(full, expr):
    path, obs = full
    store = H5Store(path)
    try:
        mask = where_mask(store, expr, len(obs))
    finally:
        store.close()
    expected = obs.index.isin(obs.query(expr).index)
    assert mask.dtype == bool and np.array_equal(mask, expected) and 0 < mask.sum() < len(obs)


@pytest.mark.parametrize("expr, what", [
    ("__import__('os').system('true')", "not allowed"), ("cov0 > @x", "'@'"), ("cov0.abs() > 1", "not allowed"),
    ("celltyp == 'B'", "did you mean 'celltype'"), ("cov0 + 1 > 2", "arithmetic"), ("celltype", "not a condition"),
    ("cov0 >", "cannot parse"), ("obs[0] > 1", "not allowed"), ("celltype < 3", "cannot evaluate"),
])
def test_bad_expressions_are_user_errors(full, expr, what):
    path, obs = full
    store = H5Store(path)
    try:
        with pytest.raises(UserError, match=None) as info:
            where_mask(store, expr, len(obs))
    finally:
        store.close()
    assert info.value.param == "where" and what in info.value.message


def test_run_where_with_idx_is_the_intersection_in_idx_order(upstream, full, tmp_path):
    _, obs = full
    idx = [40, 3, 17, 8, 55, 21, 60, 0]
    r = CliRunner().invoke(app, ["run", str(upstream / "models" / "GENE0.pt"), str(upstream / "full.h5mu"),
                                 "--covariates", COVARIATES, "--idx", ",".join(map(str, idx)), "--where",
                                 "cov0 > 0", "-o", str(tmp_path / "w.h5"), "-q"])
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "w.h5") as f:
        names = [n.decode() for n in f["obs_names"][:]]
    assert names == [obs.index[i] for i in idx if obs["cov0"].iloc[i] > 0] and names


def test_run_where_bad_is_one_line(upstream, tmp_path):
    r = CliRunner().invoke(app, ["run", str(upstream / "models" / "GENE0.pt"), str(upstream / "full.h5mu"),
                                 "--covariates", COVARIATES, "--where", "open('x')", "-o", str(tmp_path / "w.h5")])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: --where:")
    assert list(tmp_path.iterdir()) == []
