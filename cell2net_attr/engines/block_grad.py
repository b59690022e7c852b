"""One folded attention block along an IG path: a forward that keeps what its backward needs, and that backward.

The peak engine needs ``d output / d accessibility`` at every quadrature point of every cell. Instead of
recording an autograd graph, the derivative of the block is written out, so that each product has the
shape that BLAS runs fastest (the long dimension last; transposed views rather than copies) and nothing is
kept but what the backward reads. :class:`BlockGrad` is the dense block, where all ``P`` tokens move along
the path (the blocks after the first, or all of them when every peak needs its gradient); the first block
of a cell with closed peaks is :class:`~.open_block.OpenBlockGrad`.

Notation, per point (a cell at one quadrature node) and head, ``hd`` the head dimension:
``E[i, j] = exp2(q_i . k_j)`` (the folded projection carries ``log2 e / sqrt(hd)`` in ``q``),
``N_i = sum_j E[i, j] [v_j, 1]`` (the values, and the softmax denominator ``Z_i`` in row ``hd``),
``o_i = N_i[:hd] / Z_i``. Backward: ``[dN_i, dZ_i] = [do_i / Z_i, -(do_i / Z_i) . o_i]``,
``ds[i, j] = ln 2 E[i, j] [dN_i, dZ_i] . [v_j, 1]`` (``ln 2`` is folded into the weights that pull ``dq``
and ``dk`` back), ``dq_i = sum_j ds[i, j] k_j``, ``dk_j = sum_i ds[i, j] q_i``, ``dv_j = sum_i E[i, j] dN_i``.
Attention tensors are "tokens last": ``(B, rows, L)`` per point and head, and ``E`` is stored key-major,
``(B, L_key, L_query)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .peak_encoder import _Block

_LN_BACKWARD = torch.ops.aten.native_layer_norm_backward
_THRESHOLD_BACKWARD = torch.ops.aten.threshold_backward


def layer_norm(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNorm without affine over the last dimension: output, mean and reciprocal std.

    Written out (biased variance, ``rsqrt(var + eps)``, as torch computes it): torch's own kernel is
    slow for 16 dimensions.
    """
    mean = x.mean(dim=-1, keepdim=True)
    xc = x - mean
    rstd = (xc * xc).mean(dim=-1, keepdim=True).add_(eps).rsqrt_()
    return xc.mul_(rstd), mean, rstd


def layer_norm_backward(grad: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """Gradient with respect to the input of :func:`layer_norm`."""
    return _LN_BACKWARD(grad, x, [x.shape[-1]], mean, rstd, None, None, [True, False, False])[0]


def relu_backward(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``grad`` where ``out`` (a ReLU's output or input) is positive, else 0."""
    return _THRESHOLD_BACKWARD(grad, out, 0.0)


def denominator_backward(do: torch.Tensor, n: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """``[dN, dZ]`` (..., hd + 1, L) from ``do`` and ``o`` (..., hd, L); ``Z`` is row ``hd`` of ``n``."""
    hd = do.shape[-2]
    out = torch.empty(*do.shape[:-2], hd + 1, do.shape[-1], dtype=do.dtype, device=do.device)
    dn = torch.div(do, n[..., hd:hd + 1, :], out=out[..., :hd, :])
    torch.sum(dn * o, dim=-2, keepdim=True, out=out[..., hd:, :]).neg_()
    return out


class BlockWeights:
    """The folded weights of one :class:`~.peak_encoder._Block`, arranged for the forward and the backward."""

    def __init__(self, block: _Block) -> None:
        self.block = block
        self.n_heads, self.head_dim = block.n_heads, block.head_dim
        self.n_dims = self.n_heads * self.head_dim
        self.rows = 3 * self.head_dim + 1  # per head: q, k, v, ones
        self.eps1, self.eps2 = block.eps1, block.eps2
        self.use_exp2 = block.use_exp2
        hd, nh, d = self.head_dim, self.n_heads, self.n_dims
        self.w_pack_t = block.w_pack.T.contiguous()  # (D, H * rows): h @ w_pack_t = per-token packed rows
        self.b_pack = block.b_pack.view(-1)
        # backward of the projection: [dq, dk, dv] per head -> dh; ln 2 of d exp2 folded into the q and k rows
        w_bwd = block.w_pack.view(nh, self.rows, d)[:, :3 * hd].clone()
        w_bwd[:, :2 * hd] *= math.log(2.0)
        self.w_bwd = w_bwd.reshape(nh * 3 * hd, d).contiguous()
        self.w_out_t, self.b_out = block.w_out_t, block.b_out  # x1 = x + b_out + o @ w_out_t
        self.w_m_t, self.b_m = block.w_m_t, block.b_m  # m = LN2(x1) @ w_m_t + b_m
        self.w_m = block.w_m_t.T.contiguous()

    def tail(self, x1: torch.Tensor) -> tuple[torch.Tensor, TailSaved]:
        """``x1 + relu(MLP(LN2(x1)))`` over (M, P, D) tokens, and what its backward needs."""
        h2, mean, rstd = layer_norm(x1, self.eps2)
        r = torch.addmm(self.b_m, h2.view(-1, self.n_dims), self.w_m_t).relu_().view(x1.shape)
        return x1 + r, TailSaved(x1, mean, rstd, r)

    def tail_backward(self, dx2: torch.Tensor, s: TailSaved) -> torch.Tensor:
        """Gradient with respect to ``x1`` from the gradient with respect to the block's output."""
        dh2 = torch.mm(relu_backward(dx2, s.r).view(-1, self.n_dims), self.w_m).view(dx2.shape)
        return layer_norm_backward(dh2, s.x1, s.mean, s.rstd).add_(dx2)

    def out_proj(self, base: torch.Tensor, o_t: torch.Tensor) -> torch.Tensor:
        """``base + o @ w_out_t`` (M, P, D) from the attention output per point, tokens last (M, D, P)."""
        return torch.baddbmm(base, o_t.transpose(1, 2), self.w_out_t.expand(len(base), -1, -1))

    def out_proj_backward(self, dx1: torch.Tensor) -> torch.Tensor:
        """Gradient (M, D, P) with respect to the attention output, tokens last."""
        return torch.bmm(self.w_out_t.expand(len(dx1), -1, -1), dx1.transpose(1, 2))

    def scores(self, k: torch.Tensor, q_t: torch.Tensor) -> torch.Tensor:
        """``E^T = exp2(k @ q^T)`` (B, L_key, L_query) for keys ``k`` (B, L_key, hd) and queries ``q_t`` (B, hd,
        L_query). Without the score bound it is shifted by the maximum over keys (softmax is shift-invariant,
        and so is its gradient)."""
        s = torch.bmm(k, q_t)
        if not self.use_exp2:
            s = s.sub_(s.amax(dim=1, keepdim=True))
        return s.exp2_()

    def attend(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention among the ``L`` tokens of packed rows ``t`` (B, rows, L): ``E^T`` and ``N`` (B, hd + 1, L)."""
        hd = self.head_dim
        e_t = self.scores(t[:, hd:2 * hd].transpose(1, 2), t[:, :hd])
        return e_t, torch.bmm(t[:, 2 * hd:], e_t)

    def attend_backward(self, t: torch.Tensor, e_t: torch.Tensor, dn1: torch.Tensor) -> torch.Tensor:
        """``[dq, dk, dv]`` (B, 3 hd, L) of :meth:`attend` from ``[dN, dZ]`` (B, hd + 1, L_query)."""
        hd = self.head_dim
        ds_t = torch.bmm(t[:, 2 * hd:].transpose(1, 2), dn1).mul_(e_t)  # (B, L_key, L_query)
        return torch.cat([torch.bmm(t[:, hd:2 * hd], ds_t), torch.bmm(t[:, :hd], ds_t.transpose(1, 2)),
                          torch.bmm(dn1[:, :hd], e_t.transpose(1, 2))], dim=1)


@dataclass
class TailSaved:
    """What the backward of the block's MLP reads: its input, LayerNorm statistics and the ReLU output."""

    x1: torch.Tensor
    mean: torch.Tensor
    rstd: torch.Tensor
    r: torch.Tensor


@dataclass
class DenseSaved:
    """What :meth:`BlockGrad.backward` reads."""

    x: torch.Tensor
    mean: torch.Tensor
    rstd: torch.Tensor
    t: torch.Tensor  # (M H, rows, P): q, k, v, ones per head, tokens last
    e_t: torch.Tensor  # (M H, P_key, P_query)
    n: torch.Tensor  # (M H, hd + 1, P_query)
    o_t: torch.Tensor  # (M H, hd, P_query)
    tail: TailSaved


class BlockGrad(BlockWeights):
    """The dense block: (M, P, D) tokens, all moving, M points."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, DenseSaved]:
        """The block's output (M, P, D) and what :meth:`backward` needs."""
        m, p, d = x.shape
        hd, nh = self.head_dim, self.n_heads
        h, mean, rstd = layer_norm(x, self.eps1)
        t = torch.baddbmm(self.block.b_pack, self.block.w_pack.expand(m, -1, -1), h.transpose(1, 2))
        t = t.view(m * nh, self.rows, p)
        e_t, n = self.attend(t)
        o_t = n[:, :hd] / n[:, hd:]
        x2, tail = self.tail(self.out_proj(x + self.b_out, o_t.view(m, d, p)))
        return x2, DenseSaved(x, mean, rstd, t, e_t, n, o_t, tail)

    def backward(self, dx2: torch.Tensor, s: DenseSaved) -> torch.Tensor:
        """Gradient with respect to the block's input, (M, P, D)."""
        m, p, d = dx2.shape
        hd, nh = self.head_dim, self.n_heads
        dx1 = self.tail_backward(dx2, s.tail)
        dn1 = denominator_backward(self.out_proj_backward(dx1).view(m * nh, hd, p), s.n, s.o_t)
        dt = self.attend_backward(s.t, s.e_t, dn1).view(m, nh * 3 * hd, p)
        dh = torch.bmm(dt.transpose(1, 2), self.w_bwd.expand(m, -1, -1))  # (M, P, D)
        return layer_norm_backward(dh, s.x, s.mean, s.rstd).add_(dx1)
