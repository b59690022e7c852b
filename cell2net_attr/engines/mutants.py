"""Base changes of one peak, as the mutagenesis engines take them: checked, and written into one-hot sequences.

A mutant is ``(position, base)`` within one peak: the base at ``position`` (0-based, in the stored
sequence) becomes ``base`` (0-3 for A, C, G, T, the one-hot columns); every other base stays as stored.
A change to the stored base itself is allowed (its rate is the reference rate).
"""

from __future__ import annotations

import torch

from ..errors import UserError

BASES = "ACGT"


def check_mutants(peak: int, positions, bases, n_peaks: int, length: int,
                  device: torch.device) -> tuple[int, torch.Tensor, torch.Tensor]:
    """``peak`` as an int, and ``positions``, ``bases`` as (M,) int64 tensors on ``device``.

    Raises
    ------
    UserError
        A peak, position or base out of range, or positions and bases of different lengths.
    """
    if isinstance(peak, bool) or not isinstance(peak, int) or not 0 <= peak < n_peaks:
        raise UserError(f"must be a peak position in [0, {n_peaks}), got {peak!r}", param="peak")
    positions = torch.as_tensor(positions, device=device).to(torch.int64).reshape(-1)
    bases = torch.as_tensor(bases, device=device).to(torch.int64).reshape(-1)
    if positions.shape != bases.shape:
        raise UserError(f"{len(positions)} positions but {len(bases)} bases", param="bases")
    if len(positions):
        lo, hi = int(positions.min()), int(positions.max())
        if lo < 0 or hi >= length:
            raise UserError(f"positions must lie in [0, {length}), got {lo if lo < 0 else hi}", param="positions")
        if int(bases.min()) < 0 or int(bases.max()) > 3:
            raise UserError("bases must be 0-3 (A, C, G, T)", param="bases")
    return peak, positions, bases


def mutant_sequences(seq: torch.Tensor, positions: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """(M, L, 4): the one-hot sequence ``seq`` (L, 4) with base ``bases[m]`` at ``positions[m]``."""
    out = seq.unsqueeze(0).repeat(len(positions), 1, 1)
    rows = torch.arange(len(positions), device=seq.device)
    out[rows, positions] = 0.0
    out[rows, positions, bases] = 1.0
    return out
