"""Upstream's saturation-mutagenesis reduction, from sums over cells of the predicted rates to the (4, L) effect.

``cell2net.interpretation.saturation_mutagenesis`` (0.13) predicts every cell with the stored
sequence (``pred_ref``) and with each base of one peak changed, and then, per position ``i``:

1. ``pred_alt_i`` = the sum of the predictions with every base other than the stored one at ``i``,
   divided by 3;
2. the score is ``mean(pred_ref - pred_alt_i)`` over cells, or with ``logfc``
   ``log2(mean(pred_ref) / mean(pred_alt_i))``;
3. with ``smoothing``, the scores (log-fold-changes with ``logfc``) are averaged over a moving
   window: ``np.convolve(scores, ones(w) / w, mode="same")``, so the ``w // 2`` positions at each end
   average over the part of the window inside the peak and the zeros outside it;
4. the (L,) scores are tiled to (4, L) and, with ``multiply_by_inputs``, multiplied by the one-hot
   reference (4, L), leaving each position's score in the row of its stored base only.

Both means are linear in the cells, so the reduction needs only per-mutant sums of the rates over
the cells (:func:`ism_effect`): a pipeline can accumulate them over blocks of cells, per group.

The ``N`` rule. At a position whose stored base is not A/C/G/T (``N``, an all-zero one-hot row),
"every base other than the stored one" is all four, and upstream still divides by three: the
prediction averaged is ``4/3`` of a typical rate, so the score there is about ``-mean(pred_ref) / 3``,
hundreds of times a real base effect. With ``multiply_by_inputs`` the ``N`` column itself is zero
(its one-hot is), but smoothing spreads a third of it (for ``window_size=3``; ``1/w`` in general) onto
the ``window_size // 2`` neighbours on each side, whose effects are then dominated by it; without
``multiply_by_inputs`` the ``N`` column shows it in all four rows. ``n_rule="upstream"`` (the default)
reproduces this, so that upstream's outputs are matched. ``n_rule="mean"`` divides by the number of
bases tried at each position instead (3, or 4 at ``N``): the score at ``N`` is then the effect of
replacing it by a random base, as small as any other, and its neighbours are not swamped.
Soft-masked (lower-case) bases are their upper-case base here: the one-hot does not tell them apart.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError

N_RULES = ("upstream", "mean")


def upstream_mutants(ref_onehot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upstream's mutants of one peak, in its order: every position, every base other than the stored one.

    Parameters
    ----------
    ref_onehot : (L, 4)
        The stored one-hot sequence; an all-zero row (``N``) gets all four bases.

    Returns
    -------
    positions, bases : (M,) int64 each, ``M = 3 L + (number of N positions)``.
    """
    stored = np.asarray(ref_onehot) != 0  # (L, 4)
    positions, bases = np.nonzero(~stored)  # row-major: by position, then base A, C, G, T
    return positions.astype(np.int64), bases.astype(np.int64)


def ism_effect(
    ref_sum: float,
    alt_sums: np.ndarray,
    n_cells: int,
    ref_onehot: np.ndarray,
    *,
    multiply_by_inputs: bool = True,
    logfc: bool = False,
    smoothing: bool = True,
    window_size: int = 3,
    return_seq: bool = False,
    n_rule: str = "upstream",
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Upstream's (4, L) effects from sums of rates over ``n_cells`` cells.

    Parameters
    ----------
    ref_sum
        Sum over the cells of the rate with the stored sequence.
    alt_sums : (M,)
        Sum over the same cells of each mutant's rate, mutants in :func:`upstream_mutants` order.
    n_cells
        How many cells the sums run over.
    ref_onehot : (L, 4)
        The peak's stored one-hot sequence.
    multiply_by_inputs, logfc, smoothing, window_size, return_seq
        As upstream's ``saturation_mutagenesis``.
    n_rule
        ``"upstream"`` or ``"mean"``: the divisor of the alternative predictions at ``N`` (see the
        module docstring).

    Returns
    -------
    effects : (4, L) float64, and with ``return_seq`` also the one-hot reference (4, L) float32.
    """
    ref_onehot = np.asarray(ref_onehot)
    scores = position_scores(ref_sum, alt_sums, n_cells, ref_onehot, logfc=logfc, n_rule=n_rule)
    if smoothing:
        scores = smooth(scores, window_size)
    seq = np.ascontiguousarray(ref_onehot.T, dtype=np.float32)
    effects = np.tile(scores, (4, 1))
    if multiply_by_inputs:
        effects = effects * seq
    return (effects, seq) if return_seq else effects


def position_scores(ref_sum: float, alt_sums: np.ndarray, n_cells: int, ref_onehot: np.ndarray, *,
                    logfc: bool = False, n_rule: str = "upstream") -> np.ndarray:
    """(L,) float64 scores before smoothing: ``mean(ref) - mean(alt_i)``, or ``log2`` of their ratio."""
    if n_rule not in N_RULES:
        raise UserError(f"unknown N rule '{n_rule}', choose from {', '.join(N_RULES)}", param="n_rule")
    if isinstance(n_cells, bool) or not isinstance(n_cells, (int, np.integer)) or n_cells < 1:
        raise UserError(f"must be a positive number of cells, got {n_cells!r}", param="n_cells")
    positions, _ = upstream_mutants(ref_onehot)
    alt_sums = np.asarray(alt_sums, dtype=np.float64).reshape(-1)
    if len(alt_sums) != len(positions):
        raise ValueError(f"{len(alt_sums)} mutant sums for the {len(positions)} mutants of this sequence")
    length = len(ref_onehot)
    total = np.bincount(positions, weights=alt_sums, minlength=length)
    tried = np.bincount(positions, minlength=length)
    divisor = np.full(length, 3.0) if n_rule == "upstream" else tried.astype(np.float64)
    mean_ref = float(ref_sum) / n_cells
    mean_alt = total / (divisor * n_cells)
    if logfc:
        return np.log2(mean_ref / mean_alt)
    return mean_ref - mean_alt


def smooth(scores: np.ndarray, window_size: int) -> np.ndarray:
    """Upstream's moving average: ``np.convolve(scores, ones(w) / w, mode="same")``."""
    if isinstance(window_size, bool) or not isinstance(window_size, (int, np.integer)) \
            or not 1 <= window_size <= len(scores):
        raise UserError(f"must be an integer in [1, {len(scores)}] (the peak length), got {window_size!r}",
                        param="window_size")
    return np.convolve(scores, np.ones(window_size) / window_size, mode="same")
