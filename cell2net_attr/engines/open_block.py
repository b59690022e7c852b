"""The first attention block along a peak-accessibility path, where only the open peaks move.

On the path ``alpha * acc`` a closed peak (accessibility 0) keeps the token it has in every cell of the
gene, the all-closed token. So before the first block only the ``k`` open tokens move, and the block's
attention splits, per cell, into four parts (queries x keys; "open" are the ``k`` moving slots, "closed"
the ``P - k`` others):

* closed x closed: ``exp2`` of fixed scores, so each closed query's sum over closed keys is a constant of
  the cell, computed once (:attr:`Static.n_fixed`) instead of at every point; its backward is not needed
  (nothing in it moves);
* closed queries x open keys, open queries x closed keys, open x open: computed at every point,
  ``O(P k)`` instead of ``O(P^2)``.

Only the gradient with respect to the open tokens is computed (a closed peak's attribution is exactly 0
with ``multiply_by_inputs``; without it the engine makes every peak a moving slot and uses the dense
block). The closed tokens move after the block (their queries see the open keys), so the block's MLP and
everything after it run over all ``P`` tokens. Within a cell the slots are ordered open first, then
closed; attention and the MLP do not depend on the order, and the head takes its weights in that order.

This needs unshifted scores (the constant sums are exact only without a per-point maximum), so it serves
only blocks whose score bound admits ``exp2`` (:data:`~.peak_encoder.MAX_LOG2_SCORE`); see
:mod:`.block_grad` for the notation. Layouts, for ``n`` cells, ``H`` heads, ``K`` nodes: the closed
tokens' rows are per cell and head, ``(n H, rows, P - k)``, and the open slots' per head, ``(n H, K k,
rows)``, so that the products with closed tokens are one matrix product over all the nodes of a cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .block_grad import BlockWeights, TailSaved, denominator_backward, layer_norm, layer_norm_backward
from .peak_encoder import _Block


@dataclass
class Static:
    """The closed tokens of ``n`` cells with ``k`` open peaks each, as the first block sees them."""

    x0: torch.Tensor  # (n, P - k, D) closed tokens, in slot order
    base: torch.Tensor  # (n, P, D): the residual of the attention but for the open tokens, b_out and x0
    t: torch.Tensor  # (n H, rows, P - k): q, k, v, ones of the closed tokens
    n_fixed: torch.Tensor  # (n H, hd + 1, P - k): sum over closed keys of E [v, 1], per closed query


@dataclass
class OpenSaved:
    """What :meth:`OpenBlockGrad.backward` reads."""

    shape: tuple[int, int, int, int]  # n, K, k, P
    x: torch.Tensor
    mean: torch.Tensor
    rstd: torch.Tensor
    t: torch.Tensor  # (n H, K k, rows): the open slots' q, k, v, ones
    t_t: torch.Tensor  # (n H K, rows, k): the same, tokens last
    e_co: torch.Tensor  # (n H, K k, P - k): open keys x closed queries
    e_oc: torch.Tensor  # (n H, K k, P - k): open queries x closed keys
    e_oo: torch.Tensor  # (n H K, k_key, k_query)
    n_c: torch.Tensor  # (n H K, hd + 1, P - k): closed queries' sums
    n_o: torch.Tensor  # (n H K, hd + 1, k): open queries' sums
    o: torch.Tensor  # (n H K, hd, P): attention output, slot order
    static: Static
    tail: TailSaved


class OpenBlockGrad(BlockWeights):
    """The first block for cells whose closed tokens are the gene's all-closed tokens ``x0`` (P, D)."""

    def __init__(self, block: _Block, x0: torch.Tensor) -> None:
        super().__init__(block)
        if not self.use_exp2:
            raise ValueError("the open-token block needs the unshifted exp2 attention")
        nh, rows = self.n_heads, self.rows
        self.x0 = x0
        h0 = layer_norm(x0, self.eps1)[0]
        self.t0 = torch.addmm(self.b_pack, h0, self.w_pack_t).view(-1, nh, rows).permute(1, 2, 0).contiguous()
        self.e0 = self.attend(self.t0)[0]  # (H, P_key, P_query)

    def static(self, closed: torch.Tensor) -> Static:
        """The closed tokens of cells whose closed peaks are ``closed`` (n, P - k), in slot order."""
        n, pc = closed.shape
        nh, hd, p = self.n_heads, self.head_dim, self.x0.shape[0]
        mask = torch.zeros(n, p, dtype=self.x0.dtype, device=self.x0.device).scatter_(1, closed, 1.0)
        v1 = self.t0[:, 2 * hd:].unsqueeze(0) * mask[:, None, None, :]  # (n, H, hd + 1, P_key)
        fixed = torch.bmm(v1.transpose(0, 1).reshape(nh, n * (hd + 1), p), self.e0)  # (H, n (hd + 1), P_query)
        fixed = fixed.view(nh, n, hd + 1, p).transpose(0, 1)

        def pick(x: torch.Tensor) -> torch.Tensor:  # (n or 1, H, r, P) -> (n H, r, P - k) at the closed tokens
            index = closed[:, None, None, :].expand(n, nh, x.shape[2], pc)
            return x.expand(n, -1, -1, -1).gather(3, index).reshape(n * nh, x.shape[2], pc)

        x0 = self.x0[closed]
        base = torch.cat([self.b_out.expand(n, p - pc, -1), x0 + self.b_out], dim=1)
        return Static(x0, base, pick(self.t0.unsqueeze(0)), pick(fixed))

    def forward(self, x: torch.Tensor, st: Static) -> tuple[torch.Tensor, OpenSaved]:
        """Open tokens (n, K, k, D) -> the block's output for all slots (n K, P, D), open first."""
        n, nk, k, d = x.shape
        hd, nh, rows = self.head_dim, self.n_heads, self.rows
        pc = st.x0.shape[1]
        p, m = k + pc, n * nh
        h, mean, rstd = layer_norm(x, self.eps1)
        t = torch.addmm(self.b_pack, h.view(-1, d), self.w_pack_t).view(n, nk, k, nh, rows)
        t = t.permute(0, 3, 1, 2, 4).contiguous().view(m, nk * k, rows)  # the open slots, per head
        t_t = t.view(m * nk, k, rows).transpose(1, 2).contiguous()
        tc = st.t
        # closed queries: the open keys' terms, added to the cell's constant sum over the closed keys
        e_co = torch.bmm(t[..., hd:2 * hd], tc[:, :hd]).exp2_()  # (n H, K k, P - k)
        n_c = torch.bmm(t_t[:, 2 * hd:], e_co.view(m * nk, k, pc))  # (n H K, hd + 1, P - k)
        n_c.view(m, nk, hd + 1, pc).add_(st.n_fixed.unsqueeze(1))
        # open queries: closed keys (query-major) and open keys
        e_oc = torch.bmm(t[..., :hd], tc[:, hd:2 * hd]).exp2_()
        e_oo, n_o = self.attend(t_t)
        n_o += torch.bmm(e_oc, tc[:, 2 * hd:].transpose(1, 2)).view(m * nk, k, hd + 1).transpose(1, 2)
        # attention output per head, tokens last (n H K, hd, P); then per point (n K, D, P)
        o = torch.cat([n_o[:, :hd] / n_o[:, hd:], n_c[:, :hd] / n_c[:, hd:]], dim=2)
        o_pt = o.view(n, nh, nk, hd, p).transpose(1, 2).reshape(n * nk, d, p)  # moves blocks of hd x P
        x1 = self.out_proj(st.base.unsqueeze(1).expand(n, nk, p, d).reshape(n * nk, p, d), o_pt)
        x1.view(n, nk, p, d)[:, :, :k] += x  # the residual: the cell's constant base, plus the open tokens
        x2, tail = self.tail(x1)
        return x2, OpenSaved((n, nk, k, p), x, mean, rstd, t, t_t, e_co, e_oc, e_oo, n_c, n_o, o, st, tail)

    def backward(self, dx2: torch.Tensor, s: OpenSaved) -> torch.Tensor:
        """Gradient (n, K, k, D) with respect to the open tokens, from the gradient (n K, P, D) of the output."""
        n, nk, k, p = s.shape
        hd, nh = self.head_dim, self.n_heads
        d, pc, m = self.n_dims, p - k, n * nh
        dx1 = self.tail_backward(dx2, s.tail)
        do = self.out_proj_backward(dx1).view(n, nk, nh, hd, p).transpose(1, 2).reshape(m * nk, hd, p)
        dn_o = denominator_backward(do[..., :k], s.n_o, s.o[..., :k])  # [dN, dZ] (n H K, hd + 1, k)
        dn_c = denominator_backward(do[..., k:], s.n_c, s.o[..., k:])
        t_t, tc = s.t_t, s.static.t
        e_co = s.e_co.view(m * nk, k, pc)
        # open keys seen by the closed queries: dk and dv
        ds_co = torch.bmm(t_t[:, 2 * hd:].transpose(1, 2), dn_c).mul_(e_co)  # (n H K, k, P - k)
        dk_co = torch.bmm(ds_co.view(m, nk * k, pc), tc[:, :hd].transpose(1, 2)).view(m * nk, k, hd)
        dv_co = torch.bmm(e_co, dn_c[:, :hd].transpose(1, 2))
        # open queries seeing the closed keys: dq
        ds_oc = torch.bmm(dn_o.transpose(1, 2).reshape(m, nk * k, hd + 1), tc[:, 2 * hd:]).mul_(s.e_oc)
        dq_oc = torch.bmm(ds_oc, tc[:, hd:2 * hd].transpose(1, 2)).view(m * nk, k, hd)
        # open x open, tokens last, plus the above
        dt = self.attend_backward(t_t, s.e_oo, dn_o)  # (n H K, 3 hd, k)
        dt += torch.cat([dq_oc, dk_co, dv_co], dim=2).transpose(1, 2)
        dt = dt.view(n, nh, nk, 3 * hd, k).permute(0, 2, 4, 1, 3).reshape(-1, nh * 3 * hd)
        dh = torch.mm(dt, self.w_bwd).view(n, nk, k, d)
        return layer_norm_backward(dh, s.x, s.mean, s.rstd).add_(dx1.view(n, nk, p, d)[:, :, :k])
