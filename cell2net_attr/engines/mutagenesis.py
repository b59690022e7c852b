"""The structured mutagenesis engine: rates of base changes computed from what each change alters.

A base change alters one peak's sequence, hence, of everything the module computes per cell, only
one token of the attention's input. So, for mutants of one peak ``q``:

* **Sequence tower** once per mutant, not per cell: the mutants' sequences are embedded in one
  batch (eval-mode normalisation is per sample), and the first merge layer's sequence part
  ``S'_m = W1_seq e'_m + b1`` with them. The stored peaks are embedded once per gene.
* **Merge** per (cell, mutant) only for token ``q``: ``relu(W2 relu(S'_m + a_q w_acc) + b2)``, with
  ``a_q`` the cell's accessibility of peak ``q`` (``2 H D`` multiply-adds). The other tokens are
  the cell's stored ones.
* **First attention block**: one changed key, value and query. Per cell the leave-``q``-out
  softmax sums of every row are computed once for all mutants; per (cell, mutant) every row's
  softmax is updated in ``O(P D)`` and row ``q`` recomputed (:mod:`.token_update`). Later blocks, if
  any, run in full; without attention blocks only token ``q`` of the head's input changes.
* **Head**: its first Linear splits into the peaks' part (on the P x D output, all of which moves
  after an attention block) and the distance, TF, covariate and bias parts, constant per cell;
  the rest of the head (upstream's ReLU, BatchNorm, Dropout, Linear) runs as the module's own layers.

Cells and mutants are processed in blocks of at most ``block_pairs`` (cell, mutant) pairs on the
module's device; the mutants' embeddings of the last call are kept, so calling again with the next
block of cells for the same mutants does not re-embed them. ``dtype=torch.float64`` computes in
double precision (a float64 copy of the module's layers) for reference checks.

Cost per (cell, mutant) pair, upstream's default architecture with 100 peaks: about 90 thousand
multiply-adds (the block's MLP on every row and the head's first Linear dominate), against about
500 million for a full forward (the sequence tower of every peak, per cell); ``bench_mutagenesis.py``
measures the ratio. Precision: the rates equal the plain forward's to float32 rounding (about 3e-7
relative); effects, which are differences of rates about 1e-3 apart, reproduce upstream's files
within 2e-5 of their largest value, which is how far upstream's own float32 results are from the
exact (float64) ones. ``torch.compile`` was measured: about 6% faster per pair for a minute of
compilation per model shape (each gene's peak count is a new shape), so it is not used.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from ..errors import UserError
from ..model.architecture import Cell2NetModule
from .mutants import check_mutants, mutant_sequences
from .token_update import FoldedBlock

#: Sequences per pass of the sequence tower.
TOWER_BATCH = 128
#: (cell, mutant) pairs per block, by device type, when ``block_pairs`` is not given.
DEFAULT_BLOCK_PAIRS = {"cpu": 256, "cuda": 65536}
#: Cells whose per-cell precomputation (the stored tokens' attention) is batched, at least.
CONTEXT_CELLS = 16


def _with_threads(method):
    """Run an engine method with torch's intra-op threads set to the engine's ``threads``, then restore them."""

    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        if self.threads is None or self.threads == torch.get_num_threads():
            return method(self, *args, **kwargs)
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return method(self, *args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapped


class MutagenesisEngine:
    """Rates of one gene's module for mutants of its peak sequences, with the same interface as
    :class:`~cell2net_attr.engines.predict.PredictEngine`.

    Parameters
    ----------
    module : Cell2NetModule
        The gene's network, evaluated in eval mode; its weights are read at construction.
    peak_seq : (P, L, 4)
        The stored one-hot sequences (``N`` is an all-zero row).
    peak_dist : (P,)
        The distance term of each peak, as the module takes it.
    dtype : torch.dtype, optional
        Precision of the computation (default: the module's).
    block_pairs : int, optional
        (cell, mutant) pairs per block (default 256 on a CPU, where blocks that stay in cache are fastest,
        65536 on a GPU).
    threads : int or None
        torch's intra-op threads on a CPU while the engine computes (restored after each call; ``None``
        leaves torch's setting). The default, 1, is measured fastest: the work is thousands of small
        products, and on a 2-core machine shared with other jobs two threads made it 4 to 7 times
        slower. Use processes (shards, ``run-many``) for more cores.
    """

    name = "mutagenesis"

    def __init__(self, module: nn.Module, peak_seq, peak_dist, dtype: torch.dtype | None = None,
                 block_pairs: int | None = None, threads: int | None = 1) -> None:
        if not isinstance(module, Cell2NetModule):
            raise UserError(f"the mutagenesis engine needs a Cell2Net module, got {type(module).__name__}",
                            param="engine")
        first = module.fc[0]
        if not isinstance(first, nn.Linear):
            raise UserError("the head does not start with a Linear layer", param="engine")
        weight = first.weight
        self.device, self.dtype = weight.device, dtype or weight.dtype
        self.block_pairs = block_pairs or DEFAULT_BLOCK_PAIRS.get(self.device.type, 4096)
        self.threads = threads if self.device.type == "cpu" else None
        spec = module.spec
        self.n_peaks, self.length, self.n_dims = spec.n_peaks, spec.peak_len, spec.n_dims
        with torch.no_grad():
            self.tower = _in_dtype(module.seq_encoder, self.dtype)
            self.peak_seq = torch.as_tensor(peak_seq, dtype=self.dtype, device=self.device)
            conv1, conv2 = module.merge_seq_atac[0], module.merge_seq_atac[2]
            w1 = conv1.weight.detach()[:, :, 0].to(self.dtype)  # (H, E + 1): accessibility is the last channel
            self.w1_seq_t, self.w_acc = w1[:, :-1].T.contiguous(), w1[:, -1].contiguous()
            self.b1 = conv1.bias.detach().to(self.dtype)
            self.w2_t = conv2.weight.detach()[:, :, 0].T.to(self.dtype).contiguous()  # (H, D)
            self.b2 = conv2.bias.detach().to(self.dtype)
            self.s_ref = self._first_merge(self.peak_seq)  # (P, H)
            self.blocks = [FoldedBlock(b, self.dtype, self.device) for b in module.attn_blocks]
            w = first.weight.detach().to(self.dtype)
            n_enc = spec.n_peaks * spec.n_dims
            self.w_peaks_t = w[:, :n_enc].T.contiguous()  # (P * D, Hh)
            self.w_peaks_rowsum = self.w_peaks_t.view(spec.n_peaks, spec.n_dims, -1).sum(1)  # (P, Hh)
            self.w_rest_t = w[:, n_enc + spec.n_peaks:].T.contiguous()  # (T + C, Hh)
            dist = torch.as_tensor(peak_dist, dtype=self.dtype, device=self.device)
            self.const = dist @ w[:, n_enc:n_enc + spec.n_peaks].T + first.bias.detach().to(self.dtype)
            self.rest = _in_dtype(module.fc[1:], self.dtype)
        self._cache: tuple[tuple, torch.Tensor] | None = None

    # --- per gene and per mutant ------------------------------------------------------------------

    def _first_merge(self, seqs: torch.Tensor) -> torch.Tensor:
        """``W1_seq e + b1`` (M, H) for one-hot sequences (M, L, 4), the tower in batches."""
        parts = [self.tower.forward_inference(s.unsqueeze(1))[:, 0] for s in seqs.split(TOWER_BATCH)]
        return torch.cat(parts) @ self.w1_seq_t + self.b1

    def _mutant_merge(self, peak: int, positions: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
        """``S'_m`` (M, H) of the mutants, kept for the next call with the same mutants."""
        key = (peak, positions.cpu().numpy().tobytes(), bases.cpu().numpy().tobytes())
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                s = self._first_merge(mutant_sequences(self.peak_seq[peak], positions, bases))
            self._cache = (key, s)
        return self._cache[1]

    # --- per cell -----------------------------------------------------------------------------------

    def _tokens(self, s: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        """The merge's output tokens, ``relu(W2 relu(s + a w_acc) + b2)``, for ``s`` (..., H), ``acc`` (...)."""
        hidden = torch.relu(torch.addcmul(s, acc.unsqueeze(-1), self.w_acc))
        return torch.relu(hidden @ self.w2_t + self.b2)

    def _rate(self, x: torch.Tensor, const: torch.Tensor) -> torch.Tensor:
        """Rates (N,) from the attention output (N, P, D) and the head's constant part (N, Hh)."""
        z = torch.addmm(const, x.reshape(len(x), -1), self.w_peaks_t)
        return self.rest(z)[:, 0].exp()

    def _inputs(self, peak_acc, tf_exp, covariates) -> tuple[torch.Tensor, torch.Tensor]:
        """Accessibility (B, P) and the head's constant part (B, Hh) of each cell."""
        acc = torch.as_tensor(peak_acc, dtype=self.dtype, device=self.device)
        rest = torch.cat([torch.as_tensor(tf_exp, dtype=self.dtype, device=self.device),
                          torch.as_tensor(covariates, dtype=self.dtype, device=self.device)], dim=1)
        if acc.shape[1:] != (self.n_peaks,) or rest.shape[1:] != (self.w_rest_t.shape[0],) or len(rest) != len(acc):
            raise ValueError(f"inputs of shapes {tuple(acc.shape)} and {tuple(rest.shape)} do not fit the module")
        return acc, torch.addmm(self.const, rest, self.w_rest_t)

    @torch.no_grad()
    @_with_threads
    def reference_rates(self, peak_acc, tf_exp, covariates) -> torch.Tensor:
        """(B,) rates with the stored sequences."""
        acc, const = self._inputs(peak_acc, tf_exp, covariates)
        out = []
        for a, c in zip(acc.split(self.block_pairs), const.split(self.block_pairs)):
            x = self._tokens(self.s_ref, a)
            for block in self.blocks:
                x = block.full(x)
            out.append(self._rate(x, c))
        return torch.cat(out) if out else acc.new_empty(0)

    @torch.no_grad()
    @_with_threads
    def mutant_rates(self, peak: int, positions, bases, peak_acc, tf_exp, covariates) -> torch.Tensor:
        """(B, M) rates with base ``bases[m]`` at ``positions[m]`` of peak ``peak`` (the rest as stored)."""
        peak, positions, bases = check_mutants(peak, positions, bases, self.n_peaks, self.length, self.device)
        acc, const = self._inputs(peak_acc, tf_exp, covariates)
        out = acc.new_empty(len(acc), len(positions))
        if not len(positions) or not len(acc):
            return out
        s_mut = self._mutant_merge(peak, positions, bases)
        n_mut = len(positions)
        cells = max(1, min(len(acc), self.block_pairs // n_mut))  # cells per block, and mutants per block:
        per_block = max(1, self.block_pairs // cells)
        group = max(cells, CONTEXT_CELLS)  # cells whose contexts are computed together
        for g0 in range(0, len(acc), group):
            a_g, c_g = acc[g0:g0 + group], const[g0:g0 + group]
            x_g = self._tokens(self.s_ref, a_g)  # (G, P, D)
            ctx_g = self.blocks[0].context(x_g, peak) if self.blocks else None
            if len(self.blocks) == 1:  # the rows' shifts through the head: constant per cell
                c_g = c_g + ctx_g.shift @ self.w_peaks_rowsum
            for start in range(0, len(a_g), cells):
                stop = min(start + cells, len(a_g))
                a, x = a_g[start:stop], x_g[start:stop]
                ctx = ctx_g.cells(start, stop) if ctx_g is not None else None
                for m0 in range(0, n_mut, per_block):
                    token = self._tokens(s_mut[m0:m0 + per_block].unsqueeze(0), a[:, peak, None])  # (N, M, D)
                    out[g0 + start:g0 + stop, m0:m0 + token.shape[1]] = self._block_rates(
                        x, ctx, token, c_g[start:stop], peak)
        return out

    def _block_rates(self, x: torch.Tensor, ctx, token: torch.Tensor, const: torch.Tensor, peak: int) -> torch.Tensor:
        """(N, M) rates of one block of cells (stored tokens ``x``) and mutants (new tokens ``token``)."""
        n, m, d = token.shape
        if ctx is None:  # no attention: only token q of the head's input moves
            z0 = torch.addmm(const, x.reshape(n, -1), self.w_peaks_t)  # (N, Hh)
            delta = (token - x[:, peak].unsqueeze(1)) @ self.w_peaks_t[peak * d:(peak + 1) * d]
            return self.rest((z0.unsqueeze(1) + delta).reshape(n * m, -1))[:, 0].exp().view(n, m)
        attn_half, mlp_half = self.blocks[0].update(ctx, token)
        if len(self.blocks) == 1:  # the block's output less its shift, which the constant has taken
            z = torch.addmm(const.repeat_interleave(m, dim=0), mlp_half.add_(attn_half).view(n * m, -1),
                            self.w_peaks_t)
            return self.rest(z)[:, 0].exp().view(n, m)
        y = self.blocks[0].output(ctx, attn_half, mlp_half).reshape(n * m, self.n_peaks, d)
        for block in self.blocks[1:]:
            y = block.full(y)
        return self._rate(y, const.repeat_interleave(m, dim=0)).view(n, m)


def _in_dtype(layer: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``layer`` itself in eval mode when it already computes in ``dtype``, else an eval-mode copy in it."""
    if next(layer.parameters()).dtype == dtype:
        return layer.eval()
    return copy.deepcopy(layer).to(dtype).eval()
