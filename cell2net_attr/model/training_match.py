"""Does the data, and the covariate order, look like what the model was trained on?

A checkpoint does not name its covariates, but its head remembers the training inputs:
``fc = Linear -> ReLU -> BatchNorm1d -> ...``, and in train mode every batch moved the
BatchNorm's ``running_mean`` and ``running_var`` (a moving average with ``momentum`` 0.1,
from 0 and 1) towards the batch mean and unbiased variance of ``relu(Linear(x))``. After
``n = num_batches_tracked`` batches, ``d = 0.9 ** n`` of the start is left:

    running_mean = (1 - d) * mean,        running_var = d + (1 - d) * var,

so the training inputs' statistics can be recovered and compared with those of a sample of
the given cells (``relu(z)``, ``z`` the first Linear's output in eval mode). Each covariate
order is compared: permuting the covariate columns changes ``z`` by
``cov[:, perm] @ w_cov.T - cov @ w_cov.T``, without running the model.

Per hidden unit, the shifts of the mean and of the standard deviation (in pooled standard
deviations) are divided by the noise expected if the sample came from the training data: the
sample's own (``1 / n_cells``), the moving average's (a few dozen batches' worth), and an
allowance for what eval mode does not reproduce (the attention's dropout, weights that moved
within the last batches, and early in training the lag of the sequence encoder's own
BatchNorm statistics). The distance of an order is the root mean square of these ratios over
the units: about 1 for a sample of the training data. A swap warning needs the given order
far and another order much closer; an "unlike" warning needs every order far.

It cannot see a swap of covariates of the same distribution (two standard normal columns),
covariates the model hardly uses (small ``w_cov``), or anything in a head whose statistics
barely moved (fewer than about 4 batches, or a sample under 64 cells: no verdict).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

__all__ = ["Verdict", "check_module", "check_training_match", "covariate_weights", "encoder_lag",
           "head_preactivation"]

#: Fewer cells than this in the sample: no verdict (the sample's own noise is too large).
MIN_CELLS = 64
#: At most this many cells of the sample are used (evenly spaced).
MAX_CELLS = 512
#: Smallest share of the statistics that the training batches set (``1 - d``); below it, no verdict.
MIN_SETTLED = 0.3
#: All orders are tried up to this many covariates (4! = 24); beyond, the given order and its pairwise swaps.
MAX_FULL_PERMUTATION = 4
#: Largest squared ratio one unit's mean (or spread) contributes: ten noise levels. No single unit decides.
MAX_TERM = 100.0
#: Allowance, as a relative error of a unit's mean or standard deviation, for what eval mode does
#: not reproduce of training even when settled: the attention's dropout, weights moving within the
#: moving average's window (benchmarks/training_match_rates.py: Adam-like steps of up to 3e-4).
MODEL_NOISE = 0.05
#: More allowance, times ``d``: early in training every weight moves by about the learning rate per batch.
EARLY_NOISE = 2.0
#: More allowance, times :func:`encoder_lag`: eval mode normalises the sequence encoder with running
#: statistics that lag behind the batch statistics training used (upstream's two-epoch fixtures: lag ~10).
LAG_NOISE = 1.0
#: A swap warning needs the given order at least this far ...
SWAP_DISTANCE = 2.5
#: ... and another order this many times closer.
SWAP_RATIO = 2.0
#: Every order farther than this: the data looks unlike the training data.
UNLIKE_DISTANCE = 3.5
#: Orders within this factor of the best are named with it (covariates the model hardly uses can trade places).
CLOSE_RATIO = 1.2


@dataclass(frozen=True)
class Verdict:
    """What :func:`check_training_match` found.

    Attributes
    ----------
    warn
        Whether to warn the user.
    kind
        ``"ok"``, ``"swapped"`` (another covariate order fits much better), ``"unlike"`` (no order
        fits: another data file, other count layers, covariates on another scale, or a subset of
        the training cells) or ``"unchecked"`` (too few cells, or statistics too little trained).
    message
        For the user: what was found, and for a warning a second line with the evidence.
    given
        Distance of the given order (``nan`` when unchecked); about 1 for a sample of the training data.
    best, best_order
        The closest order's distance and covariate names.
    distances
        Distance of every order tried, keyed by the comma-joined names; the given order first.
    """

    warn: bool
    kind: str
    message: str
    given: float = math.nan
    best: float = math.nan
    best_order: tuple[str, ...] = ()
    distances: dict[str, float] = field(default_factory=dict)


def covariate_weights(module: nn.Module) -> torch.Tensor:
    """The columns of the head's first Linear that multiply the covariates, (H, C): its last ``n_covariates``."""
    weight = module.fc[0].weight.detach()
    return weight[:, weight.shape[1] - module.spec.n_covariates:]


def encoder_lag(module: nn.Module) -> float:
    """How far eval mode's sequence encoder is from the one training used, as a relative error.

    Training normalised each of the encoder's BatchNorm2d layers with the batch's statistics, which
    are the same in every batch (every cell has the gene's sequences); eval mode uses the running
    ones, still ``d`` (the head's ``0.9 ** n``) of the way at their start (0 and 1). Per layer, the
    largest channel's error of the shift (``d * |mean| / sd``) or of the scale; summed over layers.
    """
    n = int(module.fc[2].num_batches_tracked)
    lag = 0.0
    for bn in module.seq_encoder.modules():
        if not isinstance(bn, nn.BatchNorm2d) or bn.momentum is None:
            continue
        left = (1.0 - bn.momentum) ** n
        if left >= 1.0:
            return math.inf
        mean, var = bn.running_mean.double(), bn.running_var.double()
        target_mean = mean / (1 - left)
        target_var = ((var - left) / (1 - left)).clamp_min(0.0) + bn.eps
        shift = (target_mean - mean).abs() / target_var.sqrt()
        scale = ((var + bn.eps) / target_var).sqrt() - 1
        lag += float(torch.maximum(shift, scale.abs()).max())
    return lag


@torch.no_grad()
def head_preactivation(module: nn.Module, peak_seq, peak_dist, peak_acc, tf_exp, covariates) -> torch.Tensor:
    """The head's first Linear's output ``z`` (N, H) in eval mode, from numpy (or tensor) inputs.

    ``peak_seq`` (P, L, 4) and ``peak_dist`` (P,) are the gene's; ``peak_acc`` (N, P), ``tf_exp``
    (N, T) and ``covariates`` (N, C) the cells'. The module's mode is left as it was.
    """
    param = next(module.parameters())

    def as_t(a):
        return torch.as_tensor(np.asarray(a), dtype=param.dtype, device=param.device)

    acc, tf, cov = as_t(peak_acc), as_t(tf_exp), as_t(covariates)
    was_training = module.training
    module.eval()
    try:
        seq = module.encode_sequences(as_t(peak_seq).unsqueeze(0))
        peaks = module.encode_peaks(seq.expand(len(acc), -1, -1), acc)
        dist = as_t(peak_dist).unsqueeze(0).expand(len(acc), -1)
        return module.fc[0](module.head_input(peaks, dist, tf, cov))
    finally:
        module.train(was_training)


def check_module(module: nn.Module, z: torch.Tensor, covariates, names: list[str],
                 train_batch_size: int = 16) -> Verdict:
    """:func:`check_training_match` for a Cell2Net module: its head's BatchNorm, covariate weights and encoder lag."""
    cov = torch.as_tensor(np.asarray(covariates), dtype=z.dtype, device=z.device)
    return check_training_match(module.fc[2], z, cov, covariate_weights(module).to(z), names,
                                encoder_lag=encoder_lag(module), train_batch_size=train_batch_size)


def check_training_match(bn: nn.BatchNorm1d, z: torch.Tensor, covariates: torch.Tensor, w_cov: torch.Tensor,
                         names: list[str], encoder_lag: float = 0.0, train_batch_size: int = 16) -> Verdict:
    """Whether a sample of cells, with its covariates in the given order, fits the head's training statistics.

    Parameters
    ----------
    bn
        The head's BatchNorm1d (``fc[2]``), whose running statistics describe the training inputs.
    z
        (N, H) output of the head's first Linear on a sample of the given cells (eval mode), the
        covariates in the given order. Cells spread over the whole file: the first block of a file
        sorted by cell type is one cell type, which looks unlike the training data. 64 to 512 cells.
    covariates
        (N, C) the sample's covariate values, in the given order.
    w_cov
        (H, C) the first Linear's covariate columns (:func:`covariate_weights`).
    names
        The covariates' names, in the given order.
    encoder_lag
        :func:`encoder_lag` of the module (0: its encoder's statistics are settled).
    train_batch_size
        The training batch size, if known (upstream's tutorials use 32, its default is 128; the
        smaller, the noisier the moving average and the more tolerant the check).
    """
    if covariates.shape != (z.shape[0], len(names)) or w_cov.shape != (z.shape[1], len(names)):
        raise ValueError(f"covariates {tuple(covariates.shape)} and w_cov {tuple(w_cov.shape)} do not fit "
                         f"z {tuple(z.shape)} and {len(names)} names")
    n_cells = z.shape[0]
    if n_cells > MAX_CELLS:
        keep = torch.linspace(0, n_cells - 1, MAX_CELLS, device=z.device).round().long()
        z, covariates, n_cells = z[keep], covariates[keep], MAX_CELLS
    mean_t, var_t, settled, ema2 = (t.to(z.device) if torch.is_tensor(t) else t for t in _training_stats(bn))
    if n_cells < MIN_CELLS:
        return Verdict(False, "unchecked", f"{n_cells} cells are too few to compare with the model's training data")
    if settled < MIN_SETTLED:
        return Verdict(False, "unchecked", "the model's head statistics were hardly trained: nothing to compare with")
    z, cov, w = z.detach().float(), covariates.detach().float(), w_cov.detach().float()
    orders = _orders(cov.shape[1])
    perms = torch.tensor(orders, dtype=torch.long, device=cov.device).reshape(len(orders), -1)
    delta = cov[:, perms].permute(1, 0, 2) @ w.T - (cov @ w.T)  # (K, N, H); zero for the given order
    noise2 = 1.0 / n_cells + ema2 / train_batch_size
    allowance = MODEL_NOISE + EARLY_NOISE * (1.0 - settled) + LAG_NOISE * encoder_lag
    return _verdict(orders, _distances(z, delta, mean_t, var_t, noise2, allowance).tolist(), names)


def _orders(n: int) -> list[tuple[int, ...]]:
    """The given order first, then the others tried: all of them, or beyond a few covariates the pairwise swaps."""
    ident = tuple(range(n))
    if n <= MAX_FULL_PERMUTATION:
        return [ident] + [p for p in itertools.permutations(range(n)) if p != ident]
    swaps = []
    for i, j in itertools.combinations(range(n), 2):
        p = list(ident)
        p[i], p[j] = j, i
        swaps.append(tuple(p))
    return [ident] + swaps


def _training_stats(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """The training inputs' mean and variance implied by the running statistics, ``1 - d``, and the
    moving average's noise: the variance of its mean in units of one batch's (``sum w**2 / (sum w)**2``)."""
    n = int(bn.num_batches_tracked) if bn.num_batches_tracked is not None else 0
    mean, var = bn.running_mean.detach().double(), bn.running_var.detach().double()
    if n <= 0:
        return mean, var, 0.0, 1.0
    if bn.momentum is None:  # a cumulative average of n batches
        return mean, var, 1.0, 1.0 / n
    keep = 1.0 - bn.momentum
    settled = 1.0 - keep**n
    weight2 = bn.momentum**2 * (1.0 - keep ** (2 * n)) / (1.0 - keep**2)
    return mean / settled, ((var - keep**n) / settled).clamp_min(0.0), settled, weight2 / settled**2


def _distances(z: torch.Tensor, delta: torch.Tensor, mean_t: torch.Tensor, var_t: torch.Tensor,
               noise2: float, allowance: float) -> torch.Tensor:
    """Distance of each order, ``relu(z + delta[k])`` ((K, N, H)) against the training statistics (H,).

    ``noise2`` is the relative variance of a mean (the sample's plus the moving average's); a
    standard deviation's grows with the kurtosis of the unit's output: a unit open in few cells is
    noisy, and one closed in the whole sample is given the largest kurtosis a sample can show (N).
    """
    n = z.shape[0]
    h = torch.relu(z.unsqueeze(0) + delta)  # float32: the (K, N, H) work is the check's cost
    mean = h.mean(dim=1)
    c2 = (h - mean.unsqueeze(1)).pow_(2)
    m2 = c2.mean(dim=1)
    m4 = c2.pow_(2).mean(dim=1)
    mean, m2, m4 = mean.double(), m2.double(), m4.double()
    kurt = torch.where(m2 > 0, m4 / m2.pow(2).clamp_min(1e-300), torch.full_like(m2, n)).clamp(3.0, float(n))
    var = m2 * n / (n - 1)
    floor = 1e-6 * float(torch.cat([var.mean(dim=0), var_t]).mean()) + 1e-30
    pooled = ((var + var_t) / 2 + floor).sqrt()
    e = (mean - mean_t) / pooled
    g = (var.sqrt() - var_t.sqrt()) / pooled
    t2 = (e * e / (noise2 + allowance**2)).clamp_max(MAX_TERM) + (
        g * g / ((kurt - 1) / 4 * noise2 + allowance**2)).clamp_max(MAX_TERM)
    # a unit closed in every training batch and every sample cell says nothing: leave it out
    live = (var_t > 0) | (var > 0).any(dim=0)
    if not bool(live.any()):
        return torch.zeros(len(t2), dtype=t2.dtype)
    return (t2[:, live].mean(dim=1) / 2).sqrt()


def _verdict(orders: list[tuple[int, ...]], dist: list[float], names: list[str]) -> Verdict:
    """Apply the rule to the distances of the orders (``orders[0]`` is the given one)."""
    def label(p):
        return ",".join(names[i] for i in p)

    k = int(np.argmin(dist))
    given, best = dist[0], dist[k]
    found = dict(given=given, best=best, best_order=tuple(names[i] for i in orders[k]),
                 distances={label(p): d for p, d in zip(orders, dist)})
    typical = "data like the training data gives about 1"
    if best > UNLIKE_DISTANCE:
        return Verdict(True, "unlike", (
            "the data looks unlike the model's training data (another data file, other counts or normalisation, "
            "covariates on another scale, or only part of the training cells?)\n"
            f"  evidence: the head's BatchNorm statistics are {best:.3g} noise levels from this data's"
            f"{', in the closest covariate order' if len(orders) > 1 else ''} ({typical})"), **found)
    if k != 0 and given > SWAP_DISTANCE and given > SWAP_RATIO * best:
        close = [label(p) for i, (p, d) in enumerate(zip(orders, dist)) if i not in (0, k) and d <= CLOSE_RATIO * best]
        also = f" (about as close: {' or '.join(close)})" if close else ""
        return Verdict(True, "swapped", (
            f"covariates look swapped: the model was probably trained with the order {label(orders[k])}{also}, "
            f"not the given {label(orders[0])}\n"
            f"  evidence: the head's BatchNorm statistics fit {label(orders[k])} at distance {best:.2g} and "
            f"{label(orders[0])} at {given:.2g} ({typical})"), **found)
    return Verdict(False, "ok", f"the data fits the head's training statistics (distance {given:.2g}; {typical})",
                   **found)
