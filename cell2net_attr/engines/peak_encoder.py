"""The per-gene peak encoder of the fast engines: ``Cell2NetModule.encode_peaks`` with the sequences fixed.

Within one gene every cell shares the sequence embedding, so only the accessibility
varies. :class:`PeakEncoder` exploits that, and the small sizes of the attention:

* **Merge as a lookup table.** The merge is ``relu(W2 relu(S_p + a w) + b2)`` with
  ``S_p = W1_seq e_p + b1`` fixed per peak and ``a`` the peak's scalar accessibility.
  ``relu(S_p + a w)`` is piecewise linear in ``a`` with one breakpoint per hidden unit,
  so ``W2 relu(S_p + a w) + b2 = c_pk + a d_pk`` on interval ``k``. The tables are built
  once in float64; per cell the merge is a ``searchsorted``, one embedding lookup and an
  ``addcmul``: exact up to rounding, and differentiable in ``a`` (the slope is ``d_pk``).
* **Attention without max-subtraction.** The block is pre-norm, so the attention sees
  LayerNorm outputs (norm at most ``sqrt(D)``) and every score is bounded by a constant
  computed from the weights at construction. When that bound is below
  :data:`MAX_LOG2_SCORE`, ``exp2`` of the scores can neither overflow nor underflow, and
  attention is one batched projection (q, k, v and a ones row per head, LayerNorm affine,
  ``1 / sqrt(head_dim)`` and ``log2(e)`` folded in), ``bmm``, ``exp2``, ``bmm`` (the
  ones row gives the softmax denominator), one division. The products are arranged so
  that MKL sees ``(hd+1, P) @ (P, P)`` rather than the much slower ``(P, P) @ (P, hd)``.
  Otherwise ``scaled_dot_product_attention`` is used (same weights, always stable).
* **MLP** ``Linear(D, 4D) -> Linear(4D, D)`` has no activation in between, so it is
  folded into one ``D x D`` Linear together with the second LayerNorm's affine; the value
  bias is moved into the output bias (softmax rows sum to one).
* Cells are processed in blocks of ``block_size`` so intermediates stay in cache.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AUTO_BLOCK_CELLS", "MAX_LOG2_SCORE", "PeakEncoder", "merge_tables"]

#: Largest admissible bound on ``|score| * log2(e)`` for the unshifted ``exp2`` path:
#: ``P * 2**64`` is far from float32 overflow and ``2**-64`` far from underflow.
MAX_LOG2_SCORE = 64.0

#: Cells times peaks squared per inner block when ``block_size`` is not given.
AUTO_BLOCK_CELLS = 640_000

_F64 = torch.float64


def merge_tables(
    s: torch.Tensor, w: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Piecewise-linear tables of ``a -> W2 relu(S_p + a w) + b2``.

    Parameters
    ----------
    s : (P, H), pre-activation of the first merge layer at ``a = 0``, per peak.
    w : (H,), weights of the accessibility channel.
    w2, b2 : (D, H), (D,), second merge layer.

    Returns
    -------
    breaks : (P, H), sorted breakpoints of each peak.
    table : (P, H + 1, 2 D); on interval ``k`` of peak ``p`` (``breaks[p, k-1] < a <=
        breaks[p, k]``) the value is ``table[p, k, :D] + a * table[p, k, D:]``.
    """
    # Unit j switches at a = -s_j / w_j: on (w_j > 0) or off (w_j < 0) as a grows past it. A unit
    # with w_j == 0 never switches; its breakpoint is a harmless 0 (it toggles nothing).
    safe_w = torch.where(w == 0, torch.ones_like(w), w)
    raw = torch.where(w == 0, torch.zeros_like(s), -s / safe_w)
    breaks, order = raw.sort(dim=1)
    # Left of every breakpoint (a -> -inf) the open units are those with w < 0, and w == 0 ones with s > 0.
    open0 = ((w < 0) | ((w == 0) & (s > 0))).to(s.dtype)  # (P, H)
    c0 = (open0 * s) @ w2.T + b2  # (P, D)
    d0 = (open0 * w) @ w2.T
    # Crossing unit j's breakpoint adds sign(w_j) * (s_j, w_j) * W2[:, j]: a cumulative sum in breakpoint order,
    # of both parts at once (part 0 the constant, part 1 the slope), written in place into the table.
    sign = torch.sign(w)
    coef = torch.stack([torch.gather(sign * s, 1, order), (sign * w)[order]], dim=-1)  # (P, H, 2)
    p, h, d = s.shape[0], s.shape[1], w2.shape[0]
    table = torch.empty(p, h + 1, 2, d, dtype=s.dtype, device=s.device)
    table[:, 0, 0], table[:, 0, 1] = c0, d0
    steps = table[:, 1:]
    torch.mul(coef.unsqueeze(-1), w2.T[order].unsqueeze(2), out=steps)
    steps.cumsum_(dim=1).add_(table[:, :1])
    return breaks, table.view(p, h + 1, 2 * d)


def _score_bound(w_q: torch.Tensor, b_q: torch.Tensor, w_k: torch.Tensor, b_k: torch.Tensor) -> torch.Tensor:
    """Bound on ``|q . k|`` when q, k are affine maps of LayerNorm outputs (no affine), per head.

    Such an output ``n`` has zero mean and ``|n| < sqrt(D)``, so ``|W n + b| <=
    |W P0|_2 sqrt(D) + |b|`` with ``P0`` the projection onto zero-mean vectors. ``w_q``, ``w_k`` are
    (heads, head_dim, D) and ``b_q``, ``b_k`` (heads, head_dim); the bounds are (heads,).
    """
    d = w_q.shape[-1]
    p0 = torch.eye(d, dtype=w_q.dtype, device=w_q.device) - 1.0 / d
    nq = torch.linalg.matrix_norm(w_q @ p0, 2) * math.sqrt(d) + b_q.norm(dim=-1)
    nk = torch.linalg.matrix_norm(w_k @ p0, 2) * math.sqrt(d) + b_k.norm(dim=-1)
    return nq * nk


class _Block:
    """Folded weights of one pre-norm ``AttentionBlock`` in eval mode."""

    def __init__(self, block: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
        attn = block.attn
        d, n_heads = attn.embed_dim, attn.num_heads
        hd = d // n_heads
        self.n_heads, self.head_dim = n_heads, hd
        self.eps1, self.eps2 = block.ln_1.eps, block.ln_2.eps

        def f64(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(_F64)

        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.to(dtype=dtype, device=device).contiguous()

        # LN1 affine into the projection: W (g n + beta) + b = (W diag g) n + (W beta + b).
        w_in = f64(attn.in_proj_weight)
        b_in = w_in @ f64(block.ln_1.bias) + f64(attn.in_proj_bias)
        w_in = w_in * f64(block.ln_1.weight)
        w_in[:d] /= math.sqrt(hd)
        b_in[:d] /= math.sqrt(hd)
        w_out, b_out = f64(attn.out_proj.weight), f64(attn.out_proj.bias)
        # Softmax rows sum to one, so the value bias passes through attention unchanged.
        b_out = b_out + w_out @ b_in[2 * d:]
        b_in[2 * d:] = 0.0
        bound = float(_score_bound(w_in[:d].view(n_heads, hd, d), b_in[:d].view(n_heads, hd),
                                   w_in[d:2 * d].view(n_heads, hd, d), b_in[d:2 * d].view(n_heads, hd)).max())
        self.log2_bound = bound / math.log(2.0)
        self.use_exp2 = self.log2_bound <= MAX_LOG2_SCORE

        # exp2 path: per head, rows [q * log2(e); k; v; ones] of one (H * (3 hd + 1), D) map.
        rows = 3 * hd + 1
        w_pack = torch.zeros(n_heads, rows, d, dtype=_F64, device=w_in.device)
        b_pack = torch.zeros(n_heads, rows, dtype=_F64, device=w_in.device)
        scale = torch.tensor([1.0 / math.log(2.0), 1.0, 1.0], dtype=_F64, device=w_in.device).view(3, 1, 1)
        # w_in's rows are (q, k, v) x heads x head_dim; the pack's, heads x (q, k, v) x head_dim
        w_pack[:, :3 * hd] = (w_in.view(3, n_heads, hd, d) * scale.unsqueeze(-1)).transpose(0, 1).reshape(
            n_heads, 3 * hd, d)
        b_pack[:, :3 * hd] = (b_in.view(3, n_heads, hd) * scale).transpose(0, 1).reshape(n_heads, 3 * hd)
        b_pack[:, 3 * hd] = 1.0
        self.w_pack = cast(w_pack.reshape(n_heads * rows, d))
        self.b_pack = cast(b_pack.reshape(n_heads * rows, 1))
        self.w_in_t, self.b_in = cast(w_in.T), cast(b_in)  # for the SDPA path
        self.w_out_t, self.b_out = cast(w_out.T), cast(b_out)

        lin1, lin2 = block.mlpf[0], block.mlpf[1]
        w_m = f64(lin2.weight) @ f64(lin1.weight)
        b_m = f64(lin2.weight) @ f64(lin1.bias) + f64(lin2.bias)
        b_m = w_m @ f64(block.ln_2.bias) + b_m
        w_m = w_m * f64(block.ln_2.weight)
        self.w_m_t, self.b_m = cast(w_m.T), cast(b_m)

    def attend_exp2(self, h: torch.Tensor) -> torch.Tensor:
        """Attention core for normalised ``h`` (N, P, D) -> (N, P, D) (before out_proj)."""
        n, p, d = h.shape
        hd, nh = self.head_dim, self.n_heads
        t = torch.baddbmm(self.b_pack, self.w_pack.expand(n, -1, -1), h.transpose(1, 2))
        t = t.view(n * nh, 3 * hd + 1, p)
        e = torch.bmm(t[:, hd:2 * hd].transpose(1, 2), t[:, :hd])  # (N H, P_key, P_query)
        e = torch.exp2(e) if e.requires_grad else e.exp2_()
        o = torch.bmm(t[:, 2 * hd:], e).view(n, nh, hd + 1, p)  # value rows and denominator
        return (o[:, :, :hd] / o[:, :, hd:]).view(n, d, p).transpose(1, 2)

    def attend_sdpa(self, h: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`attend_exp2` with ``scaled_dot_product_attention`` (always stable)."""
        n, p, d = h.shape
        qkv = torch.addmm(self.b_in, h.reshape(n * p, d), self.w_in_t)
        q, k, v = qkv.view(n, p, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return F.scaled_dot_product_attention(q, k, v, scale=1.0).transpose(1, 2).reshape(n, p, d)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, P, D) -> (N, P, D)."""
        n, p, d = x.shape
        h = F.layer_norm(x, (d,), eps=self.eps1)
        o = self.attend_exp2(h) if self.use_exp2 else self.attend_sdpa(h)
        x = torch.baddbmm(x + self.b_out, o, self.w_out_t.expand(n, -1, -1))
        h = F.layer_norm(x, (d,), eps=self.eps2)
        return x + torch.relu(torch.addmm(self.b_m, h.view(n * p, d), self.w_m_t)).view(n, p, d)


class PeakEncoder:
    """``module.encode_peaks`` for one gene, with the sequence embedding fixed.

    Parameters
    ----------
    module : Cell2NetModule
        The gene's network, evaluated as in eval mode (dropout off). Its weights are
        folded at construction; later changes to ``module`` are not seen.
    seq_embd : (1, P, E) or (P, E)
        The gene's sequence embedding, ``module.encode_sequences(peak_seq)``.
    block_size : int, optional
        Cells per inner block. The default, ``AUTO_BLOCK_CELLS // P**2`` (64 cells for 100
        peaks, 16 for 200) keeps the scores of one block near 10 MB: measured best on a
        2-core CPU.

    Notes
    -----
    ``enc(peak_acc)`` with ``peak_acc`` (B, P) returns (B, P * D), equal to
    ``module.encode_peaks(seq_embd.expand(B, -1, -1), peak_acc)`` up to float32 rounding.
    It is differentiable in ``peak_acc``, works under ``torch.no_grad()``, and runs on the
    device of ``seq_embd`` (the module must be there too).
    """

    def __init__(self, module: nn.Module, seq_embd: torch.Tensor, block_size: int | None = None) -> None:
        conv1, conv2 = module.merge_seq_atac[0], module.merge_seq_atac[2]
        dtype, device = conv1.weight.dtype, seq_embd.device
        e = seq_embd.detach().reshape(-1, seq_embd.shape[-1]).to(_F64)
        w1 = conv1.weight.detach()[:, :, 0].to(_F64)  # (H, E + 1): accessibility is the last channel
        s = e @ w1[:, :-1].T + conv1.bias.detach().to(_F64)
        breaks, table = merge_tables(
            s, w1[:, -1], conv2.weight.detach()[:, :, 0].to(_F64), conv2.bias.detach().to(_F64)
        )
        self.n_peaks, self.n_dims = s.shape[0], conv2.out_channels
        self.block_size = block_size or min(4096, max(1, AUTO_BLOCK_CELLS // self.n_peaks**2))
        self.breaks = breaks.to(dtype=dtype, device=device).contiguous()
        self.table = table.reshape(-1, 2 * self.n_dims).to(dtype=dtype, device=device).contiguous()
        self.offsets = torch.arange(self.n_peaks, device=device) * (breaks.shape[1] + 1)
        self.blocks = [_Block(b, dtype, device) for b in module.attn_blocks]

    def merge(self, acc: torch.Tensor) -> torch.Tensor:
        """The two merge convolutions: (N, P) accessibility -> (N, P, D)."""
        with torch.no_grad():
            rows = torch.searchsorted(self.breaks, acc.detach().T.to(self.breaks.dtype).contiguous()).T + self.offsets
        cd = F.embedding(rows, self.table)
        d = self.n_dims
        return torch.relu(torch.addcmul(cd[..., :d], acc.unsqueeze(-1), cd[..., d:]))

    def _encode(self, acc: torch.Tensor) -> torch.Tensor:
        x = self.merge(acc)
        for block in self.blocks:
            x = block(x)
        return x.reshape(acc.shape[0], -1)

    def __call__(self, peak_acc: torch.Tensor) -> torch.Tensor:
        """(B, P) accessibility -> (B, P * D) peak encoding."""
        if peak_acc.dim() != 2 or peak_acc.shape[1] != self.n_peaks:
            raise ValueError(f"peak_acc must be (B, {self.n_peaks}), got {tuple(peak_acc.shape)}")
        if peak_acc.shape[0] <= self.block_size:
            return self._encode(peak_acc)
        return torch.cat([self._encode(a) for a in peak_acc.split(self.block_size)])
