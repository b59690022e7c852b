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
    queries: torch.Tensor  # (N, H, P, hd) queries of the stored tokens (scaled)
    keys: torch.Tensor  # (N, H, P, hd)
    values: torch.Tensor  # (N, H, P, hd)
    lse: torch.Tensor  # (N, H, P) log-sum-exp of each row's scores over the keys p != q
    out_rows: torch.Tensor  # (N, P, H, D) per head, the leave-q-out attention output through out_proj
    base: torch.Tensor  # (N, P, D) x + out bias + sum over heads of out_rows: each row's output at w = 0


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
        queries, keys, values = (t.transpose(1, 2) for t in self._qkv(x))  # (N, H, P, hd)
        scores = queries @ keys.transpose(-1, -2)  # (N, H, P rows, P keys)
        scores[..., q] = -math.inf
        lse = torch.logsumexp(scores, dim=-1)  # (N, H, P)
        o = torch.softmax(scores, dim=-1) @ values  # (N, H, P, hd)
        if x.shape[1] == 1:  # no key but q: nothing to leave in (row q is recomputed in full anyway)
            lse, o = torch.zeros_like(lse), torch.zeros_like(o)
        out_rows = (o.unsqueeze(-2) @ self.w_out_heads.unsqueeze(1)).squeeze(-2).permute(0, 2, 1, 3)  # (N, P, H, D)
        base = x + self.b_out + out_rows.sum(dim=2)
        return Context(q, queries, keys, values, lse, out_rows, base)

    def update(self, ctx: Context, token: torch.Tensor) -> torch.Tensor:
        """The block's output (N, M, P, D) with token ``ctx.q`` replaced by ``token`` (N, M, D)."""
        q = ctx.q
        nq, nk, nv = self._qkv(token)  # (N, M, H, hd)
        # rows r != q: the new key's softmax share w (N, H, P, M), and o'_r = o_r + w (v'_q - o_r)
        share = torch.sigmoid(ctx.queries @ nk.permute(0, 2, 3, 1) - ctx.lse.unsqueeze(-1))
        v_out = (nv.unsqueeze(-2) @ self.w_out_heads).squeeze(-2)  # (N, M, H, D): v'_q through out_proj
        by_row = share.permute(0, 2, 3, 1)  # (N, P, M, H)
        y = (ctx.base.unsqueeze(2) - by_row @ ctx.out_rows).transpose(1, 2)  # (N, M, P, D)
        y = y + share.permute(0, 3, 2, 1) @ v_out  # (N, M, P, H) @ (N, M, H, D)
        # row q: its query changed too, so attend over all keys (the stored ones and the new one) in full
        sq = nq.transpose(1, 2) @ ctx.keys.transpose(-1, -2)  # (N, H, M, P)
        sq[..., q] = (nq * nk).sum(-1).transpose(1, 2)
        att = torch.softmax(sq, dim=-1)
        oq = att @ ctx.values + att[..., q:q + 1] * (nv.transpose(1, 2) - ctx.values[:, :, q:q + 1])
        y[:, :, q] = token + self.b_out + oq.transpose(1, 2).flatten(-2) @ self.w_out_t
        return self._mlp(y)
