"""The training-match check: does the data, and the covariate order, fit the head's BatchNorm statistics?

Models whose statistics settled (as 40 epochs of training leave them) come from
``synthetic.trained_gene``; the upstream fixtures were trained for two epochs only.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import cell2net_attr
from cell2net_attr.data.rows import SharedRows
from cell2net_attr.model.training_match import (_orders, _training_stats, check_module, check_training_match,
                                                 covariate_weights, encoder_lag, head_preactivation)
from cell2net_attr.synthetic import CellSource, settle_head_statistics, trained_gene

FIXTURES = Path("/work/shared/fixtures/upstream-0.13")


def _one_thread(fn, *args, **kwargs):
    """``fn`` on one thread: many small batches only contend for a shared machine's cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def _trained(*args, **kwargs):
    return _one_thread(trained_gene, *args, **kwargs)


def _names(c: int) -> list[str]:
    return [f"cov{j}" for j in range(c)]


def _check(gene, rows=None, cells=None, order=None):
    """Verdict for ``cells`` (default: ``gene.cells[rows]``) with the covariate columns in ``order``."""
    acc, tf, cov = cells if cells is not None else (c[rows] for c in gene.cells)
    names = _names(cov.shape[1])
    if order is not None:
        cov, names = cov[:, order], [names[i] for i in order]
    z = head_preactivation(gene.module, gene.peak_seq, gene.peak_dist, acc, tf, cov)
    return check_module(gene.module, z, cov, names)


def _spread(n_cells: int, n: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n_cells, n, replace=False))


@pytest.fixture(scope="module")
def settled():
    """Settled models: (seed, n_covariates) -> TrainedGene, covariates used 5x a random module's.

    500 cells, 10 epochs of 12 batches: 120 batches leave 0.9^120 = 3e-6 of the initial statistics.
    """
    cases = [(0, 1), (1, 2), (2, 2), (3, 2), (4, 3), (5, 4)]
    return {c: _trained(c[0], c[1], n_cells=500, n_epochs=10, covariate_weight=5.0) for c in cases}


def test_training_stats_undo_the_moving_average():
    """Few batches: running stats are (1 - 0.9^n) of the mean and 0.9^n + (1 - 0.9^n) of the variance."""
    bn = torch.nn.BatchNorm1d(3).train()
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 2.0, 0.5]) + 3
    for _ in range(5):
        bn(x)
    mean, var, settled, ema2 = _training_stats(bn)
    assert settled == pytest.approx(1 - 0.9**5)
    torch.testing.assert_close(mean.float(), x.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var.float(), x.var(0), rtol=1e-4, atol=1e-5)
    # the weights of the 5 batches are 0.1 * 0.9^k; the variance of their normalised average
    w = 0.1 * 0.9 ** np.arange(5)
    assert ema2 == pytest.approx((w**2).sum() / w.sum() ** 2)


def test_a_batchnorm_trained_on_known_data_recognises_it():
    """No covariates: only "does this data look like the training data" (one order)."""
    gen = torch.Generator().manual_seed(1)
    scale, shift = torch.rand(32, generator=gen) + 0.5, torch.randn(32, generator=gen)
    bn = torch.nn.BatchNorm1d(32).train()
    for _ in range(200):
        bn(torch.relu(torch.randn(32, 32, generator=gen) * scale + shift))
    no_cov, no_w = torch.zeros(300, 0), torch.zeros(32, 0)
    same = check_training_match(bn, torch.randn(300, 32, generator=gen) * scale + shift, no_cov, no_w, [])
    assert same.kind == "ok" and same.given < 2.0 and list(same.distances) == [""]
    moved = check_training_match(bn, torch.randn(300, 32, generator=gen) * scale + shift + 0.5, no_cov, no_w, [])
    assert moved.kind == "unlike" and moved.warn and "covariate order" not in moved.message


def test_head_preactivation_is_the_first_linear_of_the_forward():
    gene = _trained(7, 2, n_cells=100, n_epochs=2)
    acc, tf, cov = (c[:10] for c in gene.cells)
    seen = []
    hook = gene.module.fc[0].register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        seq = torch.as_tensor(gene.peak_seq).expand(10, -1, -1, -1)
        dist = torch.as_tensor(gene.peak_dist).expand(10, -1)
        gene.module(seq, torch.as_tensor(acc), dist, torch.as_tensor(tf), torch.as_tensor(cov))
    hook.remove()
    z = head_preactivation(gene.module, gene.peak_seq, gene.peak_dist, acc, tf, cov)
    torch.testing.assert_close(z, seen[0], rtol=1e-5, atol=1e-5)
    assert not gene.module.training


def test_permuted_orders_equal_running_the_model_with_them(settled):
    """The distances of other orders, from ``z`` and ``w_cov`` alone, equal those of the model run with that order."""
    gene = settled[(5, 4)]
    rows = _spread(len(gene.cells[0]), 200, 0)
    given = _check(gene, rows)
    for order in ([1, 0, 2, 3], [3, 2, 1, 0], [0, 2, 3, 1]):
        label = ",".join(_names(4)[i] for i in order)
        assert _check(gene, rows, order=order).given == pytest.approx(given.distances[label], rel=1e-6)


def test_orders_tried():
    assert _orders(0) == [()] and _orders(1) == [(0,)]
    assert len(_orders(2)) == 2 and len(_orders(4)) == 24 and len(set(_orders(4))) == 24
    assert _orders(3)[0] == (0, 1, 2)
    assert len(_orders(7)) == 1 + 21  # beyond 4 covariates: the given order and its pairwise swaps


def test_many_covariates_find_a_pairwise_swap():
    gene = _trained(8, 6, n_cells=400, n_epochs=10, covariate_weight=5.0,
                        covariates=((3.5, 0.3), (4.2, 0.25), (1.0, 0.5), (8.0, 1.0), (-2.0, 0.5), (6.0, 0.3)))
    rows = _spread(400, 320, 5)
    assert not _check(gene, rows).warn
    v = _check(gene, rows, order=[0, 4, 2, 3, 1, 5])
    assert v.kind == "swapped" and list(v.best_order) == _names(6), v


def _batch_stat_encoding(module, peak_seq, batch_size=16):
    """The sequence embedding as training computed it: every BatchNorm2d normalised by a batch of copies."""
    enc = copy.deepcopy(module.seq_encoder).train()
    with torch.no_grad():
        return enc(torch.as_tensor(peak_seq).unsqueeze(0).expand(batch_size, -1, -1, -1))[:1]


def test_encoder_lag_measures_how_far_eval_mode_is_from_training(settled):
    gene = settled[(1, 2)]
    with torch.no_grad():
        eval_embd = gene.module.seq_encoder(torch.as_tensor(gene.peak_seq).unsqueeze(0))
    train_embd = _batch_stat_encoding(gene.module, gene.peak_seq)
    assert float((eval_embd - train_embd).norm() / train_embd.norm()) < 1e-3
    assert encoder_lag(gene.module) < 1e-3
    m = cell2net_attr.load_model(FIXTURES / "models" / "GENE0.pt", FIXTURES / "models" / "GENE0.h5mu",
                                 covariates=["cov0", "cov1"], device="cpu")
    try:
        with torch.no_grad():
            eval_embd = m.module.seq_encoder(torch.as_tensor(m.data.peak_seq).unsqueeze(0))
        train_embd = _batch_stat_encoding(m.module, m.data.peak_seq)
        assert float((eval_embd - train_embd).norm() / train_embd.norm()) > 0.1
        assert encoder_lag(m.module) > 1.0
    finally:
        m.close()


@pytest.mark.parametrize("case", [(0, 1), (1, 2), (2, 2), (3, 2), (4, 3), (5, 4)])
def test_correct_order_does_not_warn_on_settled_models(settled, case):
    gene = settled[case]
    for n, seed in ((64, 0), (200, 1), (400, 2)):
        v = _check(gene, _spread(len(gene.cells[0]), n, seed))
        assert not v.warn, v.message
        assert v.kind == "ok" and v.given < 3.0


@pytest.mark.parametrize("case,order", [((1, 2), [1, 0]), ((2, 2), [1, 0]), ((3, 2), [1, 0]),
                                        ((4, 3), [2, 0, 1]), ((5, 4), [1, 0, 2, 3]), ((5, 4), [0, 3, 2, 1])])
def test_swapped_order_warns_naming_the_training_order(settled, case, order):
    gene = settled[case]
    v = _check(gene, _spread(len(gene.cells[0]), 400, 3), order=order)
    assert v.warn and v.kind == "swapped", v
    assert list(v.best_order) == _names(case[1])
    assert ",".join(_names(case[1])) in v.message and "swapped" in v.message
    assert v.best * 2 < v.given


@pytest.mark.parametrize("case,order", [((4, 3), [1, 0, 2]), ((4, 3), [0, 2, 1]), ((5, 4), [0, 1, 3, 2])])
def test_swapped_order_is_never_closer_than_the_training_order(settled, case, order):
    """Where a swap is too small to warn about (here log10 RNA and ATAC depths, 0.7 apart, in a model
    that uses them little), the training order still fits best, and the verdict never names another."""
    gene = settled[case]
    v = _check(gene, _spread(len(gene.cells[0]), 400, 3), order=order)
    assert list(v.best_order) == _names(case[1]), v
    assert v.kind in ("ok", "swapped")


def test_counts_and_log_counts_swapped_warn():
    """Depth as counts and as log10 counts (``total_counts`` and ``total_counts_log`` obs columns), swapped."""
    gene = _trained(9, 2, n_cells=500, n_epochs=10, covariates=((3.5, 0.3), (4.2, 0.25)))
    acc, tf, cov = (c[_spread(500, 400, 6)] for c in gene.cells)
    # a model trained on (counts, log10 counts): rebuild its statistics from those covariates
    counts = np.stack([10.0 ** cov[:, 0], cov[:, 0]], axis=1).astype(np.float32)
    train = gene.train
    tr_counts = np.stack([10.0 ** gene.cells[2][train, 0], gene.cells[2][train, 0]], axis=1).astype(np.float32)
    with torch.no_grad():
        gene.module.fc[0].weight[:, -2:] *= torch.tensor([1e-3, 1.0])  # a weight per count, not per log count
    _one_thread(settle_head_statistics, gene.module, gene.peak_seq, gene.peak_dist,
                (gene.cells[0][train], gene.cells[1][train], tr_counts), n_epochs=10)
    assert not _check(gene, cells=(acc, tf, counts)).warn
    v = _check(gene, cells=(acc, tf, counts), order=[1, 0])
    assert v.kind == "swapped" and list(v.best_order) == ["cov0", "cov1"], v


@pytest.mark.parametrize("case", [(1, 2), (4, 3)])
def test_other_data_warns(settled, case):
    gene = settled[case]
    rng = np.random.default_rng(11)
    acc, tf, cov = (c[_spread(len(gene.cells[0]), 400, 4)] for c in gene.cells)
    raw = cov.copy()
    raw[:, :2] = 10.0 ** raw[:, :2]  # depths as counts, not log10
    normalised = [np.log1p(1e4 * x / np.maximum(x.sum(1, keepdims=True), 1)).astype(np.float32) for x in (acc, tf)]
    other = CellSource.random(np.random.default_rng(99), gene.module.spec.n_peaks, gene.module.spec.n_tfs, case[1])
    for cells in ((acc, tf, raw), (*normalised, cov), other.cells(rng, 400), gene.source.cells(rng, 400, 1.0)):
        v = _check(gene, cells=cells)
        assert v.warn and v.kind == "unlike", v
        assert "unlike the model's training data" in v.message


def test_few_cells_or_untrained_statistics_are_unchecked(settled):
    gene = settled[(1, 2)]
    assert _check(gene, np.arange(20)).kind == "unchecked"
    bn = torch.nn.BatchNorm1d(gene.module.spec.head_hidden)
    z = torch.randn(100, gene.module.spec.head_hidden)
    v = check_training_match(bn, z, torch.randn(100, 2), covariate_weights(gene.module), _names(2))
    assert v.kind == "unchecked" and not v.warn
    with pytest.raises(ValueError, match="do not fit"):
        check_training_match(bn, z, torch.randn(100, 3), covariate_weights(gene.module), _names(2))


def _fixture_verdict(gene: str, data: str, order: list[str]):
    m = cell2net_attr.load_model(FIXTURES / "models" / f"{gene}.pt", FIXTURES / data, covariates=order, device="cpu")
    try:
        b = SharedRows([m.data]).read(np.arange(m.data.n_cells))[0]
        z = head_preactivation(m.module, m.data.peak_seq, m.data.peak_dist, b.peak_acc, b.tf_exp, b.covariates)
        return check_module(m.module, z, b.covariates, order)
    finally:
        m.close()


@pytest.mark.parametrize("gene", ["GENE0", "TF0"])
@pytest.mark.parametrize("data", ["models/{}.h5mu", "full.h5mu"])
def test_upstream_fixtures_never_warn(gene, data):
    """Two epochs (6 batches) leave the statistics half-settled; the correct order must never warn.

    Their covariates are both N(0, 1), so a swap is invisible by design: it does not warn either.
    """
    v = _fixture_verdict(gene, data.format(gene), ["cov0", "cov1"])
    assert v.kind == "ok" and not v.warn, v
    swapped = _fixture_verdict(gene, data.format(gene), ["cov1", "cov0"])
    assert not swapped.warn
    assert swapped.distances["cov0,cov1"] == pytest.approx(v.given, rel=1e-6)
