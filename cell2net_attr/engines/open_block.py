"""The first attention block along a peak-accessibility path, where only the open peaks move.

On the path ``alpha * acc`` a closed peak (accessibility 0) keeps the token it has in every cell of the
gene, the all-closed token. So before the first block only the ``k`` open tokens move, and the block's
attention splits, per cell, into four parts (queries x keys; "open" are the ``k`` moving slots, "closed"
the ``P - k`` others):

* closed x closed: ``exp2`` of fixed scores, so each closed query's sum over closed keys is a constant of
  the cell, computed once (:attr:`Static.n_fixed_t`) instead of at every point; its backward is not
  needed (nothing in it moves);
* closed queries x open keys, open queries x closed keys, open x open: computed at every point,
  ``O(P k)`` instead of ``O(P^2)``.

Only the gradient with respect to the open tokens is computed (a closed peak's attribution is exactly 0
with ``multiply_by_inputs``; without it the engine makes every peak a moving slot and uses the dense
block). The closed tokens move after the block (their queries see the open keys), so the block's MLP and
everything after it run over all ``P`` tokens. Within a cell the slots are ordered open first, then
closed (:class:`Static` holds the permutation); attention and the MLP do not depend on the order, and the
head takes its weights in the same order.

This needs unshifted scores (the constant sums are exact only without a per-point max), so it serves
only blocks whose score bound admits ``exp2`` (:data:`~.peak_encoder.MAX_LOG2_SCORE`); see
:mod:`.block_grad` for the notation. Layouts, per cell ``n``, head ``H``, node ``K``: the per-cell
constants are ``(n H, rows, P - k)`` (tokens last) and the open slots ``(n H, K k, rows)``, so that the
per-cell products run as one matrix product over all the nodes of a cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .block_grad import (BlockWeights, TailSaved, denominator_backward, key_grad, key_values, key_weights, layer_norm,
                         layer_norm_backward, query_grad)
from .peak_encoder import _Block


@dataclass
class Static:
    """The closed tokens of ``n`` cells with ``k`` open peaks each, as the first block sees them."""

    x0: torch.Tensor  # (n, P - k, D) closed tokens, in slot order
    t: torch.Tensor  # (n H, rows, P - k): q, k, v, ones of the closed tokens
    kv: torch.Tensor  # (n H, 2 hd + 1 + hd^2, P - k): their key_values
    n_fixed: torch.Tensor  # (n H, hd + 1, P - k): sum over closed keys of E [v, 1], per closed query


@dataclass
class OpenSaved:
    """What :meth:`OpenBlockGrad.backward` reads."""

    shape: tuple[int, int, int, int]  # n, K, k, P
    x: torch.Tensor
    mean: torch.Tensor
    rstd: torch.Tensor
    t_t: torch.Tensor  # (n H K, rows, k): the open slots' q, k, v, ones, tokens last
    e_co: torch.Tensor  # (n H, K k, P - k): closed queries x open keys, key-major
    e_oo: torch.Tensor  # (n H K, k_key, k_query)
    n_c: torch.Tensor  # (n H K, hd + 1, P - k): closed queries' sums
    n_o: torch.Tensor  # (n H K, 2 hd + 1 + hd^2, k): open queries' sums
    o: torch.Tensor  # (n H K, hd, P): attention output, slot order
    static: Static
    tail: TailSaved


class OpenBlockGrad(BlockWeights):
    """The first block for cells whose closed tokens are the gene's all-closed tokens ``x0`` (P, D)."""

    def __init__(self, block: _Block, x0: torch.Tensor) -> None:
        super().__init__(block)
        if not self.use_exp2:
            raise ValueError("the open-token block needs the unshifted exp2 attention")
        hd, nh, rows = self.head_dim, self.n_heads, self.rows
        self.x0 = x0
        h0 = layer_norm(x0, self.eps1)[0]
        self.t0 = torch.addmm(self.b_pack, h0, self.w_pack_t).view(-1, nh, rows).permute(1, 2, 0).contiguous()
        self.kv0 = key_values(self.t0, hd)
        self.e0 = self.scores(self.t0)  # (H, P_key, P_query)

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

        return Static(self.x0[closed], pick(self.t0.unsqueeze(0)), pick(self.kv0.unsqueeze(0)), pick(fixed))

    def forward(self, x: torch.Tensor, st: Static) -> tuple[torch.Tensor, OpenSaved]:
        """Open tokens (n, K, k, D) -> the block's output for all slots (n, K, P, D), open first."""
        n, nk, k, d = x.shape
        hd, nh, rows = self.head_dim, self.n_heads, self.rows
        pc = st.x0.shape[1]
        p, m = k + pc, n * nh
        h, mean, rstd = layer_norm(x, self.eps1)
        t = torch.addmm(self.b_pack, h.view(-1, d), self.w_pack_t).view(n, nk, k, nh, rows)
        t = t.permute(0, 3, 1, 2, 4).contiguous().view(m, nk * k, rows)  # the open slots, token-major
        t_t = t.view(m * nk, k, rows).transpose(1, 2).contiguous()
        tc = st.t
        # closed queries x open keys (key-major): their sums add to the closed keys' fixed part
        e_co = self.scores_of(t[..., hd:2 * hd], tc[:, :hd])  # (n H, K k, P - k)
        n_c = torch.bmm(t_t[:, 2 * hd:], e_co.view(m * nk, k, pc))  # (n H K, hd + 1, P - k)
        n_c.view(m, nk, hd + 1, pc).add_(st.n_fixed.unsqueeze(1))
        # open queries x closed keys (query-major, not kept: the backward needs only the sums), and open x open
        n_oc = torch.bmm(self.scores_of(t[..., :hd], tc[:, hd:2 * hd]), st.kv.transpose(1, 2))  # (n H, K k, .)
        e_oo, n_o = self.attend(t_t)
        n_o += n_oc.view(m * nk, k, -1).transpose(1, 2)
        # attention output per head, tokens last, open slots first: (n H K, hd, P); then per point (n K, D, P)
        o = torch.cat([n_o[:, :hd] / n_o[:, hd:hd + 1], n_c[:, :hd] / n_c[:, hd:]], dim=2)
        o_pt = o.view(n, nh, nk, hd, p).transpose(1, 2).reshape(n * nk, d, p)  # moves blocks of hd x P
        base = torch.empty(n, nk, p, d, dtype=x.dtype, device=x.device)  # the residual
        torch.add(x, self.b_out, out=base[:, :, :k])
        base[:, :, k:] = st.x0.unsqueeze(1) + self.b_out
        x1 = torch.baddbmm(base.view(n * nk, p, d), o_pt.transpose(1, 2), self.w_out_t.expand(n * nk, -1, -1))
        x2, tail = self.tail(x1)
        return x2, OpenSaved((n, nk, k, p), x, mean, rstd, t_t, e_co, e_oo, n_c, n_o, o, st, tail)

    def scores_of(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``exp2(a @ b)``: unshifted scores between open slots (rows of ``a``) and closed tokens (``b``)."""
        return torch.bmm(a, b).exp2_()

    def backward(self, dx2: torch.Tensor, s: OpenSaved) -> torch.Tensor:
        """Gradient (n, K, k, D) with respect to the open tokens, from the gradient of the output."""
        n, nk, k, p = s.shape
        hd, nh = self.head_dim, self.n_heads
        d, pc, m = self.n_dims, p - k, n * nh
        dx1 = self.tail_backward(dx2.view(n * nk, p, d), s.tail)
        do = torch.bmm(self.w_out_t.expand(n * nk, -1, -1), dx1.transpose(1, 2))  # (n K, D, P)
        do = do.view(n, nk, nh, hd, p).transpose(1, 2).reshape(m * nk, hd, p)  # per head, like o
        dn_o = denominator_backward(do[..., :k], s.n_o, s.o[..., :k])  # [dN, dZ] (n H K, hd + 1, k)
        dn_c = denominator_backward(do[..., k:], s.n_c, s.o[..., k:])
        t_t, tc = s.t_t, s.static.t
        # open keys: from the closed queries (directly: there are few open keys) and from the open queries
        e_co = s.e_co.view(m * nk, k, pc)
        ds_co = torch.bmm(t_t[:, 2 * hd:].transpose(1, 2), dn_c).mul_(e_co)  # (n H K, k, P - k)
        dk_co = torch.bmm(ds_co.view(m, nk * k, pc), tc[:, :hd].transpose(1, 2)).view(m * nk, k, hd)
        dv_co = torch.bmm(e_co, dn_c[:, :hd].transpose(1, 2))
        y = torch.bmm(key_weights(t_t[:, :hd], dn_o, hd), s.e_oo.transpose(1, 2))  # (n H K, ., k_key)
        dkv = key_grad(y, t_t[:, 2 * hd:3 * hd], hd).add_(torch.cat([dk_co, dv_co], dim=2).transpose(1, 2))
        # open queries: from the forward's sums
        dt = torch.cat([query_grad(s.n_o, dn_o, hd), dkv], dim=1)
        dt = dt.view(n, nh, nk, 3 * hd, k).permute(0, 2, 4, 1, 3).reshape(-1, nh * 3 * hd)
        dh = torch.mm(dt, self.w_bwd).view(n, nk, k, d)
        return layer_norm_backward(dh, s.x, s.mean, s.rstd).add_(dx1.view(n, nk, p, d)[:, :, :k])
