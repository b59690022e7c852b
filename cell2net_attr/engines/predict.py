"""The reference mutagenesis engine: the plain module forward, as upstream's ``Cell2Net.predict`` runs it.

Upstream's ``predict`` runs the module in eval mode without autograd over every cell, in batches of
``batch_size`` (32 in ``saturation_mutagenesis``), and returns ``exp`` of the output (the Poisson
rate), float32, with no clamping. Each mutant is one such pass with the peak's sequence changed in
every cell. This engine does exactly that and nothing cleverer: it is the referee of
:class:`~cell2net_attr.engines.mutagenesis.MutagenesisEngine`, with the same interface.
"""

from __future__ import annotations

import torch
from torch import nn

from .mutants import check_mutants, mutant_sequences

#: Cells per forward pass: upstream's ``saturation_mutagenesis`` default ``batch_size``.
UPSTREAM_BATCH = 32


class PredictEngine:
    """Rates of one gene's module for mutants of its peak sequences, by the full forward pass.

    Parameters
    ----------
    module : Cell2NetModule
        The gene's network; it is put in eval mode (as upstream's ``predict`` does).
    peak_seq : (P, L, 4)
        The stored one-hot sequences (``N`` is an all-zero row).
    peak_dist : (P,)
        The distance term of each peak, as the module takes it.
    block_cells : int
        Cells per forward pass.

    Notes
    -----
    Per-cell inputs are ``peak_acc`` (B, P), ``tf_exp`` (B, T), ``covariates`` (B, C), tensors or arrays;
    they are moved to the module's device, where everything runs.
    """

    name = "predict"

    def __init__(self, module: nn.Module, peak_seq, peak_dist, block_cells: int = UPSTREAM_BATCH) -> None:
        self.module = module.eval()
        weight = next(module.parameters())
        self.device, self.dtype = weight.device, weight.dtype
        self.peak_seq = torch.as_tensor(peak_seq, dtype=self.dtype, device=self.device)
        self.peak_dist = torch.as_tensor(peak_dist, dtype=self.dtype, device=self.device)
        self.block_cells = block_cells

    def _inputs(self, *arrays) -> list[torch.Tensor]:
        return [torch.as_tensor(a, dtype=self.dtype, device=self.device) for a in arrays]

    @torch.no_grad()
    def _rates(self, seq: torch.Tensor, peak_acc: torch.Tensor, tf_exp: torch.Tensor,
               covariates: torch.Tensor) -> torch.Tensor:
        """(B,) rates with the sequences ``seq`` (P, L, 4) in every cell."""
        out = []
        for start in range(0, len(peak_acc), self.block_cells):
            acc = peak_acc[start : start + self.block_cells]
            b = len(acc)
            log_rate = self.module(self._cells(seq, b), acc, self.peak_dist.expand(b, -1),
                                   tf_exp[start : start + b], covariates[start : start + b])
            out.append(log_rate.exp()[:, 0])
        return torch.cat(out) if out else peak_acc.new_empty(0)

    @staticmethod
    def _cells(seq: torch.Tensor, b: int) -> torch.Tensor:
        """(b, P, L, 4) copies of ``seq`` for ``b`` cells, laid out as (b, 4, P, L) in memory.

        The module permutes its input to (b, 4, P, L) for the convolutions. A (b, P, L, 4)-contiguous
        batch becomes a channels-last tensor there, which torch convolves along another path whose
        results differ from upstream's in the last bit; this layout gives upstream's float32
        predictions bit for bit (measured on the fixtures).
        """
        return seq.permute(2, 0, 1).unsqueeze(0).expand(b, -1, -1, -1).contiguous().permute(0, 2, 3, 1)

    def reference_rates(self, peak_acc, tf_exp, covariates) -> torch.Tensor:
        """(B,) rates with the stored sequences."""
        return self._rates(self.peak_seq, *self._inputs(peak_acc, tf_exp, covariates))

    def mutant_rates(self, peak: int, positions, bases, peak_acc, tf_exp, covariates) -> torch.Tensor:
        """(B, M) rates with base ``bases[m]`` at ``positions[m]`` of peak ``peak`` (the rest as stored)."""
        n_peaks, length = self.peak_seq.shape[:2]
        peak, positions, bases = check_mutants(peak, positions, bases, n_peaks, length, self.device)
        peak_acc, tf_exp, covariates = self._inputs(peak_acc, tf_exp, covariates)
        seqs = mutant_sequences(self.peak_seq[peak], positions, bases)
        out = peak_acc.new_empty(len(peak_acc), len(positions))
        for m in range(len(positions)):
            seq = self.peak_seq.clone()
            seq[peak] = seqs[m]
            out[:, m] = self._rates(seq, peak_acc, tf_exp, covariates)
        return out
