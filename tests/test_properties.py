"""Property tests (hypothesis): --idx parsing round-trips, IG completeness with the exact method,
permutation equivariance over cells, and multiply_by_inputs on == off times the input."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cell2net_attr.data.gene_view import load_gene_data
from cell2net_attr.data.job_index import DataIndex
from cell2net_attr.data.rows import SharedRows
from cell2net_attr.data.selection import read_tokens, resolve_idx, resolve_tokens
from cell2net_attr.data.store import open_store
from cell2net_attr.engines.base import IGParams
from cell2net_attr.engines.registry import make_engine
from cell2net_attr.errors import UserError
from cell2net_attr.model.checkpoint import load_checkpoint

from .conftest import COVARIATES, sha256_tree

FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
MODEL = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True, scope="module")
def _upstream_fixtures_never_change(upstream):
    before = sha256_tree(upstream)
    yield
    assert sha256_tree(upstream) == before, "a shared fixture file changed"


def obs_index(n: int) -> pd.Index:
    return pd.Index([f"cell{i}_x" for i in range(n)])


def parse(spec: str, n: int, idx_type: str = "auto") -> list[int]:
    return resolve_tokens(read_tokens(spec), obs_index(n), idx_type).tolist()


# ------------------------------------------------------------------------------------- idx round trips


@st.composite
def positions(draw, max_n: int = 300):
    n = draw(st.integers(1, max_n))
    rows = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=min(n, 60), unique=True))
    return n, rows


def format_positions(rows: list[int], n: int, negative: list[bool], sep: str) -> str:
    return sep.join(str(r - n if neg else r) for r, neg in zip(rows, negative))


def compact(rows: list[int]) -> str:
    """Runs of consecutive positions as half-open ranges: the inverse of the parser."""
    out, i = [], 0
    while i < len(rows):
        j = i
        while j + 1 < len(rows) and rows[j + 1] == rows[j] + 1:
            j += 1
        out.append(str(rows[i]) if i == j else f"{rows[i]}:{rows[j] + 1}")
        i = j + 1
    return ",".join(out)


@FAST
@given(positions(), st.data())
def test_idx_positions_round_trip(pn, data):
    n, rows = pn
    negative = data.draw(st.lists(st.booleans(), min_size=len(rows), max_size=len(rows)))
    sep = data.draw(st.sampled_from([",", ", ", " ,"]))
    assert parse(format_positions(rows, n, negative, sep), n) == rows
    assert parse(format_positions(rows, n, negative, sep), n, "position") == rows
    assert resolve_idx(rows, obs_index(n)).tolist() == rows
    assert resolve_idx(np.asarray(rows), obs_index(n)).tolist() == rows


@FAST
@given(positions())
def test_idx_compact_ranges_round_trip(pn):
    n, rows = pn
    assert parse(compact(rows), n) == rows
    assert parse(compact(sorted(rows)), n) == sorted(rows)


@FAST
@given(st.integers(1, 200), st.data())
def test_idx_range_forms(n, data):
    start = data.draw(st.integers(0, n - 1))
    stop = data.draw(st.integers(start + 1, n))
    forms = [f"{start}:{stop}", f"{start - n}:{stop - n if stop < n else ''}", f"{start if start else ''}:{stop}"]
    for form in forms:
        assert parse(form, n) == list(range(start, stop)), form


@FAST
@given(st.integers(1, 120), st.data())
def test_idx_names_round_trip(n, data):
    names = obs_index(n)
    chosen = data.draw(st.lists(st.sampled_from(list(names)), min_size=1, max_size=min(n, 40), unique=True))
    expected = [names.get_loc(c) for c in chosen]
    spec = ",".join(chosen)
    assert parse(spec, n) == expected
    assert parse(spec, n, "name") == expected
    assert resolve_idx(chosen, names).tolist() == expected


@FAST
@given(positions(), st.booleans())
def test_idx_file_equals_inline(pn, with_blank_lines):
    n, rows = pn
    lines = [str(r) for r in rows]
    if with_blank_lines:
        lines = [x for r in lines for x in (r, "  ")]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "cells.txt"
        path.write_text("\n".join(lines) + "\n")
        assert parse(f"@{path}", n) == parse(",".join(map(str, rows)), n) == rows


@FAST
@given(positions(), st.data())
def test_idx_duplicates_are_an_error(pn, data):
    n, rows = pn
    dup = data.draw(st.sampled_from(rows))
    where = data.draw(st.integers(0, len(rows)))
    as_negative = data.draw(st.booleans())
    tokens = [str(r) for r in rows]
    tokens.insert(where, str(dup - n if as_negative else dup))
    with pytest.raises(UserError) as info:
        parse(",".join(tokens), n)
    assert info.value.param == "idx" and "more than once" in info.value.message
    with pytest.raises(UserError):
        resolve_idx([*rows, dup], obs_index(n))


@FAST
@given(st.text(alphabet=st.sampled_from(list("0123456789:-, abc_x@\t")), max_size=30), st.integers(1, 50))
def test_idx_any_text_is_a_selection_or_a_user_error(text, n):
    assume(not text.lstrip().startswith("@"))  # @FILE reads files: covered above
    try:
        rows = parse(text, n)
    except UserError as exc:
        assert exc.param in ("idx", "idx_type") and exc.message
        return
    assert rows and len(set(rows)) == len(rows) and all(0 <= r < n for r in rows)


# -------------------------------------------------------------------------------------- the model side


class Gene:
    """A checkpoint bound to its data, with the raw pieces the engine needs."""

    def __init__(self, ck_path: Path, data_path: Path, covariates: list[str]):
        self.ck = load_checkpoint(ck_path)
        self.store = open_store(data_path)
        self.data = load_gene_data(DataIndex(self.store), self.ck.gene, self.ck.spec, covariates)
        self.module = self.ck.build_module()
        self.seq = torch.from_numpy(self.data.peak_seq)
        self.dist = torch.from_numpy(self.data.peak_dist)
        self.ck_path, self.data_path, self.covariates = ck_path, data_path, covariates

    def engine(self, **params):
        return make_engine("fast", self.module, self.seq, self.dist, IGParams(**params))

    def forward(self, acc, tf, cov) -> torch.Tensor:
        b = acc.shape[0]
        with torch.no_grad():
            return self.module(self.seq.unsqueeze(0).expand(b, *self.seq.shape), acc,
                               self.dist.unsqueeze(0).expand(b, -1), tf, cov)[:, 0]


@pytest.fixture(scope="module", params=["upstream-GENE0", "synthetic-GA"])
def gene(request, upstream, demo_atlas):
    if request.param == "upstream-GENE0":
        g = Gene(upstream / "models" / "GENE0.pt", upstream / "models" / "GENE0.h5mu", COVARIATES.split(","))
    else:
        data, checkpoints = demo_atlas
        g = Gene(checkpoints[0], data, COVARIATES.split(","))
    yield g
    g.store.close()


@st.composite
def cell_inputs(draw, gene: Gene):
    """Per-cell inputs: real cells (optionally rescaled) or random ones of any scale."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    b = draw(st.integers(1, 12))
    if draw(st.booleans()):
        rows = rng.choice(gene.data.n_cells, size=b, replace=False)
        batch = SharedRows([gene.data]).read(rows)[0]
        acc, tf, cov = batch.peak_acc, batch.tf_exp, batch.covariates
        tf = tf * np.float32(draw(st.sampled_from([0.0, 0.5, 1.0, 3.0, 20.0])))
    else:
        p, t, c = gene.ck.spec.n_peaks, gene.ck.spec.n_tfs, gene.ck.spec.n_covariates
        scale = draw(st.sampled_from([0.1, 1.0, 10.0, 100.0]))
        acc = rng.poisson(2.0, (b, p)).astype(np.float32)
        tf = (scale * rng.gamma(1.0, 1.0, (b, t))).astype(np.float32)
        tf[rng.random((b, t)) < 0.3] = 0.0
        cov = rng.normal(size=(b, c)).astype(np.float32)
    return tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in (acc, tf, cov))


@MODEL
@given(data=st.data())
def test_completeness_exact(gene, data):
    """With method exact, sum of attributions == F(x) - F(baseline), up to float32 rounding."""
    acc, tf, cov = data.draw(cell_inputs(gene))
    engine = gene.engine(method="exact", return_delta=True)
    attr, delta = engine.attribute(acc, tf, cov)
    gap = gene.forward(acc, tf, cov) - gene.forward(acc, torch.zeros_like(tf), cov)
    tol = 1e-4 * (1.0 + gap.abs() + (attr.abs().sum(dim=1)))
    assert torch.all((attr.sum(dim=1) - gap).abs() <= tol), (attr.sum(dim=1) - gap)
    assert delta is not None and torch.all(delta.abs() <= tol), delta
    zero = engine.attribute(acc, torch.zeros_like(tf), cov)[0]  # x == baseline: nothing to attribute
    assert torch.count_nonzero(zero) == 0


@MODEL
@given(data=st.data())
def test_multiply_by_inputs_off_times_input_equals_on(gene, data):
    acc, tf, cov = data.draw(cell_inputs(gene))
    method = data.draw(st.sampled_from(["exact", "gausslegendre", "riemann_middle", "riemann_trapezoid"]))
    n_steps = data.draw(st.integers(1 if method in ("exact", "gausslegendre") else 2, 40))
    on = gene.engine(method=method, n_steps=n_steps, multiply_by_inputs=True).attribute(acc, tf, cov)[0]
    off = gene.engine(method=method, n_steps=n_steps, multiply_by_inputs=False).attribute(acc, tf, cov)[0]
    torch.testing.assert_close(off * tf, on, rtol=1e-6, atol=1e-7)


PEAKS = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@PEAKS
@given(data=st.data())
def test_peaks_do_not_depend_on_batching_or_order(gene, data):
    """Peak attributions of cells in any order and any batches are the same numbers as of the whole batch,
    whatever their open peaks (the engine groups cells by their number of open peaks)."""
    acc, tf, cov = data.draw(cell_inputs(gene))
    acc = acc * torch.from_numpy(np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
                                 .random(acc.shape) < data.draw(st.sampled_from([0.0, 0.3, 0.7, 1.0])))
    mbi = data.draw(st.booleans())
    engine = gene.engine(n_steps=data.draw(st.integers(1, 12)), multiply_by_inputs=mbi, target="peaks")
    whole = engine.attribute(acc, tf, cov)[0]
    perm = torch.from_numpy(np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).permutation(len(acc)))
    size = data.draw(st.integers(1, len(acc)))
    got = torch.cat([engine.attribute(acc[r], tf[r], cov[r])[0] for r in perm.split(size)])
    assert torch.equal(got, whole[perm])
    if mbi:
        assert torch.all(whole[acc == 0] == 0)


@PEAKS
@given(data=st.data())
def test_peaks_multiply_by_inputs_off_times_input_equals_on(gene, data):
    """With multiply_by_inputs the engine differentiates only the open peaks; without, every peak: the two
    agree where both are defined."""
    acc, tf, cov = data.draw(cell_inputs(gene))
    method = data.draw(st.sampled_from(["gausslegendre", "riemann_middle", "riemann_trapezoid"]))
    n_steps = data.draw(st.integers(1 if method == "gausslegendre" else 2, 24))
    on = gene.engine(method=method, n_steps=n_steps, target="peaks").attribute(acc, tf, cov)[0]
    off = gene.engine(method=method, n_steps=n_steps, multiply_by_inputs=False, target="peaks").attribute(acc, tf,
                                                                                                        cov)[0]
    torch.testing.assert_close(off * acc, on, rtol=1e-5, atol=1e-6 * float(on.abs().max()) + 1e-8)


@pytest.fixture(scope="module")
def model(upstream):
    from cell2net_attr.api import load_model

    m = load_model(upstream / "models" / "GENE0.pt", upstream / "models" / "GENE0.h5mu", covariates=COVARIATES,
                   device="cpu")
    yield m
    m.close()


@MODEL
@given(data=st.data())
def test_permuting_cells_permutes_rows(model, data):
    from cell2net_attr.api import tf_attr

    n = model.data.n_cells
    method = data.draw(st.sampled_from(["exact", "gausslegendre", "riemann_left"]))
    n_steps = data.draw(st.integers(1 if method in ("exact", "gausslegendre") else 2, 12))
    perm = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).permutation(n).tolist()
    k = data.draw(st.integers(1, n))
    batch_size = data.draw(st.integers(1, n + 5))
    full = tf_attr(model, None, batch_size=64, n_steps=n_steps, method=method)
    sub = tf_attr(model, list(perm[:k]), batch_size=batch_size, n_steps=n_steps, method=method,
                  num_workers=data.draw(st.integers(0, 2)))
    np.testing.assert_allclose(sub, full[list(perm[:k])], rtol=1e-5, atol=1e-6)
    names = [str(model.data.obs_names[i]) for i in perm[:k]]
    by_name = tf_attr(model, names, batch_size=batch_size, n_steps=n_steps, method=method)
    np.testing.assert_allclose(by_name, sub, rtol=1e-5, atol=1e-6)


@settings(max_examples=4, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_permuting_cells_in_the_data_permutes_rows(model, upstream, seed):
    """The same cells stored in another order: the rows follow them."""
    import mudata as md

    from cell2net_attr.api import load_model, tf_attr

    perm = np.random.default_rng(seed).permutation(64)
    md.set_options(pull_on_update=False)
    full = md.read_h5mu(upstream / "models" / "GENE0.h5mu")
    shuffled = full[full.obs_names[list(perm)]].copy()
    other = load_model(upstream / "models" / "GENE0.pt", shuffled, gene="GENE0", covariates=COVARIATES, device="cpu")
    a = tf_attr(other, None, batch_size=16, n_steps=8)
    b = tf_attr(model, None, batch_size=16, n_steps=8)
    np.testing.assert_allclose(a, b[list(perm)], rtol=1e-5, atol=1e-6)


def test_multiply_by_inputs_captum_engine(model):
    """The reference engine honours the same identity (a few cells: it is slow)."""
    from cell2net_attr.api import tf_attr

    rows = [3, 0, 17, 42]
    on = tf_attr(model, rows, batch_size=4, n_steps=8, engine="captum")
    off = tf_attr(model, rows, batch_size=4, n_steps=8, multiply_by_inputs=False, engine="captum")
    tf = SharedRows([model.data]).read(np.asarray(rows))[0].tf_exp
    np.testing.assert_allclose(off * tf, on, rtol=1e-5, atol=1e-7)
