"""One attention block, folded, with the exact update for a change of one token.

A base change alters one peak's sequence, hence one token ``q`` of the block's input. For every
other row ``r`` the attention output changes only through the one changed key ``k'_q`` and value
``v'_q``: per head, with ``LSE_r`` the log-sum-exp of row ``r``'s scores over the keys ``p != q``
and ``o_r`` its softmax average of their values,

    o'_r = o_r + w_r (v'_q - o_r),    w_r = sigmoid(q_r . k'_q - LSE_r),

(``w_r`` is the new key's share of the softmax: ``e / (Z + e)`` written stably). So per cell
:meth:`FoldedBlock.context` computes, once for all mutants of peak ``q``, the leave-``q``-out
``LSE_r`` and ``o_r`` (already through ``out_proj``); per (cell, mutant) :meth:`FoldedBlock.update`
costs ``O(P D)`` for the attention of all rows (the changed row ``q`` is recomputed in full, also
``O(P D)``) instead of ``O(P^2 D)``, and then the block's MLP on every row. The weights are folded
as in eval mode: LayerNorm affines into the next linear map, ``1 / sqrt(head_dim)`` into the query,
the value bias into the output bias (softmax rows sum to one), and upstream's activation-free MLP
``Linear(D, 4D) -> Linear(4D, D)`` into one ``D x D`` map.

How it is laid out for speed (torch on a CPU is slow at products of 4-wide matrices, at reductions
over 16 numbers per row and at strided copies; it is fast at products of 16-wide ones):

* the changed token's query, key, value and per-head value through ``out_proj`` are one product;
* every row's score with the new key, for all heads, is one product with the rows' queries laid
  out block-diagonally by head (likewise row ``q``'s scores and values);
* the rows are shifted by their stored mean (the shift passes through the residual to the head,
  where it is a constant per cell, and LayerNorm does not see it), so that the second LayerNorm's
  variance ``E[y^2] - mean^2`` comes from products without cancellation.

In float64 the update equals the block's plain forward to rounding (about 1e-16 relative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Context:
    """What one block's update needs of a batch of cells for one changed token ``q``."""

    q: int
    lse: torch.Tensor  # (N, 1, P * H) minus the log-sum-exp of each row's scores over the keys p != q
    query_blocks: torch.Tensor  # (N, D, P * H) the rows' queries, block-diagonal by head, columns (row, head)
    key_blocks: torch.Tensor  # (N, D, H * P) the stored keys, block-diagonal by head, columns (head, key)
    value_blocks: torch.Tensor  # (N, H * P, D) the stored values through out_proj, rows (head, key)
    value_q: torch.Tensor  # (N, 1, H, D) the stored value of token q through out_proj, per head
    out_rows: torch.Tensor  # (N * P, H, D) per head, the leave-q-out attention output through out_proj
    base: torch.Tensor  # (N * P, 1, D) each row's output at w = 0 (x + out bias + sum of out_rows), less shift
    shift: torch.Tensor  # (N, P) a per-row constant taken out of every row (LayerNorm does not see it)

    def cells(self, start: int, stop: int) -> Context:
        """The context of cells ``start:stop`` of the batch."""
        p = self.shift.shape[1]
        rows = slice(start * p, stop * p)
        return Context(self.q, self.lse[start:stop], self.query_blocks[start:stop], self.key_blocks[start:stop],
                       self.value_blocks[start:stop], self.value_q[start:stop], self.out_rows[rows],
                       self.base[rows], self.shift[start:stop])


class FoldedBlock:
    """An upstream ``AttentionBlock`` (pre-norm, eval mode) with its weights folded, in ``dtype``."""

    def __init__(self, block: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
        attn = block.attn
        d, heads = attn.embed_dim, attn.num_heads
        hd = d // heads
        self.dim, self.heads, self.head_dim = d, heads, hd
        self.eps1, self.eps2 = block.ln_1.eps, block.ln_2.eps

        def f64(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(device=device, dtype=torch.float64)

        w_in = f64(attn.in_proj_weight)
        b_in = w_in @ f64(block.ln_1.bias) + f64(attn.in_proj_bias)
        w_in = w_in * f64(block.ln_1.weight)
        w_in[:d] /= math.sqrt(hd)
        b_in[:d] /= math.sqrt(hd)
        w_out = f64(attn.out_proj.weight)
        b_out = f64(attn.out_proj.bias) + w_out @ b_in[2 * d:]
        b_in[2 * d:] = 0.0
        lin1, lin2 = block.mlpf[0], block.mlpf[1]
        w_m = f64(lin2.weight) @ f64(lin1.weight)
        b_m = f64(lin2.weight) @ f64(lin1.bias) + f64(lin2.bias)
        b_m = b_m + w_m @ f64(block.ln_2.bias)
        w_m = w_m * f64(block.ln_2.weight)

        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.to(dtype).contiguous()

        self.w_in_t, self.b_in = cast(w_in.T), cast(b_in)
        self.w_out_t, self.b_out = cast(w_out.T), cast(b_out)
        self.w_out_heads = cast(w_out.T.reshape(heads, hd, d))  # (H, hd, D): head h's rows of out_proj
        self.w_m_t, self.b_m = cast(w_m.T), cast(b_m)
        # a changed token's query, key, value and, per head, its value through out_proj: one product
        w_vout = torch.cat([w_in[2 * d + h * hd:2 * d + (h + 1) * hd].T @ w_out.T[h * hd:(h + 1) * hd]
                            for h in range(heads)], dim=1)  # (D, H * D)
        self.w_token = cast(torch.cat([w_in.T, w_vout], dim=1))
        self.b_token = cast(torch.cat([b_in, torch.zeros(heads * d, dtype=b_in.dtype, device=device)]))
        # the second LayerNorm's statistics by products
        self.mean_col = cast(torch.full((d, 1), 1.0 / d, dtype=w_m.dtype, device=device))
        self.w_m_colsum = cast(w_m.T.sum(0))

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(..., D) tokens -> queries, keys, values (..., H, hd) each."""
        h = F.layer_norm(x, (self.dim,), eps=self.eps1)
        qkv = (h @ self.w_in_t + self.b_in).unflatten(-1, (3, self.heads, self.head_dim))
        return qkv.unbind(-3)

    def _mlp(self, y: torch.Tensor) -> torch.Tensor:
        """The block's second half: ``y + relu(MLP(LN(y)))``."""
        h = F.layer_norm(y, (self.dim,), eps=self.eps2)
        return y + torch.relu(h @ self.w_m_t + self.b_m)

    def full(self, x: torch.Tensor) -> torch.Tensor:
        """The whole block: (N, P, D) -> (N, P, D)."""
        q, k, v = (t.transpose(1, 2) for t in self._qkv(x))  # (N, H, P, hd)
        o = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
        return self._mlp(x + o.transpose(1, 2).flatten(-2) @ self.w_out_t + self.b_out)

    def context(self, x: torch.Tensor, q: int) -> Context:
        """Precompute, for the stored tokens ``x`` (N, P, D) of a batch of cells, the update of token ``q``."""
        n, p, d = x.shape
        heads, hd = self.heads, self.head_dim
        queries, keys, values = (t.transpose(1, 2) for t in self._qkv(x))  # (N, H, P, hd)
        # all heads at once through block-diagonal keys and values (4 times the multiply-adds of per-head
        # products, but products of 16-wide matrices instead of 4-wide ones: faster)
        key_blocks = _block_diagonal(keys, rows_major=False)  # (N, D, H P)
        raw_values = _block_diagonal(values, rows_major=False).transpose(1, 2)  # (N, H P, D)
        scores = (queries.transpose(1, 2).reshape(n, p, d) @ key_blocks).view(n, p, heads, p)
        scores[..., q] = -math.inf
        top = scores.amax(dim=-1, keepdim=True) if p > 1 else torch.zeros_like(scores)
        weights = scores.sub_(top).exp_()  # (N, P rows, H, P keys) over the keys p != q
        total = weights.sum(dim=-1, keepdim=True)
        lse = (top + total.log()).view(n, 1, p * heads)  # columns (row, head)
        o = ((weights.view(n, p, heads * p) @ raw_values).view(n, p, heads, hd) / total).transpose(0, 2)
        if p == 1:  # no key but q: nothing to leave in (row q is recomputed in full anyway)
            lse, o = torch.zeros_like(lse), torch.zeros_like(o)
        # per head through out_proj: (H, P N, hd) @ (H, hd, D)
        out_rows = (o.reshape(heads, p * n, hd) @ self.w_out_heads).view(heads, p, n, d).permute(2, 1, 0, 3)
        base = x + self.b_out + out_rows.sum(dim=2)
        # rows keep about their stored mean: taking it out makes the LayerNorm variance a difference
        # of small numbers (E[y^2] - mean^2 without cancellation)
        shift = base.mean(dim=-1)
        base = (base - shift.unsqueeze(-1)).reshape(n * p, 1, d)
        value_q = (values[:, :, q].unsqueeze(-2) @ self.w_out_heads).squeeze(-2)  # (N, H, D)
        return Context(q, -lse, _block_diagonal(queries, rows_major=True), key_blocks, raw_values @ self.w_out_t,
                       value_q.unsqueeze(1), out_rows.reshape(n * p, heads, d), base, shift)

    def update(self, ctx: Context, token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's output with token ``ctx.q`` replaced by ``token`` (N, M, D), as two (N, M, P, D) parts:
        the attention half less ``ctx.shift`` and the MLP half; the output is their sum plus the shift."""
        q, (n, m, d), p, heads = ctx.q, token.shape, ctx.shift.shape[1], self.heads
        proj = F.layer_norm(token, (d,), eps=self.eps1) @ self.w_token + self.b_token  # (N, M, 3D + H D)
        nq, nk = proj[..., :d], proj[..., d:2 * d]
        v_out = proj[..., 3 * d:].reshape(n * m, heads, d).contiguous()  # per head, v'_q through out_proj
        # rows r != q: the new key's softmax share w, and out_r = base_r + sum_h w_h (v_out_h - out_rows_rh)
        share = torch.baddbmm(ctx.lse, nk, ctx.query_blocks).sigmoid_()  # (N, M, P * H)
        y = torch.bmm(share.view(n * m, p, heads), v_out).view(n, m, p, d)
        by_row = share.view(n, m, p, heads).transpose(1, 2).reshape(n * p, m, heads)
        y += torch.baddbmm(ctx.base, by_row, ctx.out_rows, alpha=-1.0).view(n, p, m, d).transpose(1, 2)
        # row q: its query changed too, so it attends over all keys (the stored ones and the new one) in full
        sq = (nq @ ctx.key_blocks).view(n, m, heads, p)
        sq[..., q] = (nq * nk).view(n, m, heads, -1).sum(-1)
        att = torch.softmax(sq, dim=-1)
        row_q = (att.view(n, m, heads * p) @ ctx.value_blocks).add_(token + self.b_out)
        row_q += (att[..., q, None] * (v_out.view(n, m, heads, d) - ctx.value_q)).sum(2)  # the new value at q
        y[:, :, q] = row_q - ctx.shift[:, q, None, None]
        return y, self._mlp_half(y.view(-1, d)).view(n, m, p, d)

    def _mlp_half(self, y: torch.Tensor) -> torch.Tensor:
        """``relu(MLP(LN(y)))`` for rows ``y`` (R, D), the LayerNorm statistics from matrix products
        (a reduction over 16 numbers per row is far slower than a product on CPUs)."""
        mean = y @ self.mean_col
        var = y.square() @ self.mean_col - mean * mean
        scaled = torch.addcmul(y @ self.w_m_t, mean, self.w_m_colsum, value=-1.0)  # (y - mean) W_m
        return torch.addcmul(self.b_m, scaled, torch.rsqrt(var + self.eps2)).relu_()

    @staticmethod
    def output(ctx: Context, attn_half: torch.Tensor, mlp_half: torch.Tensor) -> torch.Tensor:
        """The block's output (N, M, P, D) from the two parts :meth:`update` returns."""
        return attn_half + mlp_half + ctx.shift[:, None, :, None]


def _block_diagonal(t: torch.Tensor, rows_major: bool) -> torch.Tensor:
    """(N, H, P, hd) per-head vectors -> (N, H hd, P H) block-diagonal: ``[h e, col] = t[h, r, e]`` at the
    column of (r, h) (``rows_major``: ``r H + h``; else ``h P + r``), zero at other heads' columns."""
    n, heads, p, hd = t.shape
    if rows_major:
        out = t.new_zeros(n, heads, hd, p, heads)
        for h in range(heads):
            out[:, h, :, :, h] = t[:, h].transpose(-1, -2)
    else:
        out = t.new_zeros(n, heads, hd, heads, p)
        for h in range(heads):
            out[:, h, :, h] = t[:, h].transpose(-1, -2)
    return out.view(n, heads * hd, p * heads)
