"""One folded attention block along an IG path: a forward that keeps what its backward needs, and that backward.

The peak engine needs ``d output / d accessibility`` at every quadrature point of every cell. Instead of
recording an autograd graph, the derivative of the block is written out, so that each product has the
shape BLAS runs fastest and the attention matrices are read as few times as possible: on a CPU they do not
fit in cache, so each pass over them costs memory bandwidth. :class:`BlockGrad` is the dense block, where
all ``P`` tokens move along the path (the blocks after the first, or all of them when every peak needs
its gradient); the first block of a cell with closed peaks is :class:`~.open_block.OpenBlockGrad`.

Notation, per point (a cell at one quadrature node) and head, ``hd`` the head dimension:
``E[i, j] = exp2(q_i . k_j)`` (the folded projection carries ``log2 e / sqrt(hd)`` in ``q``); the
forward reads ``E`` once, for ``N_i = sum_j E[i, j] [v_j, 1, k_j, k_j (x) v_j]``: the values and the
softmax denominator ``Z_i`` (``o_i = N_i[:hd] / Z_i``) and, for the backward, ``kappa_i = sum_j E[i, j]
k_j`` and ``M_i = sum_j E[i, j] k_j v_j^T``. With ``dN_i = do_i / Z_i`` and ``dZ_i = -dN_i . o_i``, the
score gradient is ``ds[i, j] = ln 2 E[i, j] (dN_i . v_j + dZ_i)`` (``ln 2`` is folded into the weights
that pull ``dq`` and ``dk`` back), hence

* ``dq_i = M_i dN_i + dZ_i kappa_i``: no pass over ``E``;
* ``dk_j = A_j v_j + b_j`` and ``dv_j``, from one pass ``sum_i E[i, j] [q_i (x) dN_i, dZ_i q_i, dN_i] =
  [A_j, b_j, dv_j]``.

Attention tensors are "tokens last": ``(B, rows, L)`` per point and head.
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


def outer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per token, ``a (x) b`` along the rows (dimension -2; row ``r * hd + c`` is ``a_r b_c``)."""
    return (a.unsqueeze(-2) * b.unsqueeze(-3)).flatten(-3, -2)


def key_values(t: torch.Tensor, hd: int) -> torch.Tensor:
    """``[v, 1, k, k (x) v]`` (..., 2 hd + 1 + hd^2, L) of packed rows ``t`` (..., rows, L): what ``E`` sums."""
    k, v1 = t[..., hd:2 * hd, :], t[..., 2 * hd:, :]
    return torch.cat([v1, k, outer(k, v1[..., :hd, :])], dim=-2)


def denominator_backward(do: torch.Tensor, n: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """``[dN, dZ] = [do / Z, -(do / Z) . o]`` (..., hd + 1, L); ``do``, ``o`` (..., hd, L), ``Z`` is ``n``'s row hd."""
    hd = do.shape[-2]
    out = torch.empty(*do.shape[:-2], hd + 1, do.shape[-1], dtype=do.dtype, device=do.device)
    dn = torch.div(do, n[..., hd:hd + 1, :], out=out[..., :hd, :])
    torch.sum(dn * o, dim=-2, keepdim=True, out=out[..., hd:, :]).neg_()
    return out


def query_grad(n: torch.Tensor, dn1: torch.Tensor, hd: int) -> torch.Tensor:
    """``dq = M dN + dZ kappa`` (..., hd, L) from the forward's sums ``n`` and ``[dN, dZ]``, tokens last."""
    m = n[..., 2 * hd + 1:, :].unflatten(-2, (hd, hd))
    dq = (m * dn1[..., None, :hd, :]).sum(dim=-2)
    return dq.addcmul_(n[..., hd + 1:2 * hd + 1, :], dn1[..., hd:, :])


def key_weights(q: torch.Tensor, dn1: torch.Tensor, hd: int) -> torch.Tensor:
    """``[q (x) dN, dZ q, dN]`` (..., hd^2 + 2 hd, L) per query, tokens last: what ``E^T`` sums for the keys."""
    dn, dz = dn1[..., :hd, :], dn1[..., hd:, :]
    return torch.cat([outer(q, dn), q * dz, dn], dim=-2)


def key_grad(y: torch.Tensor, v: torch.Tensor, hd: int) -> torch.Tensor:
    """``[dk, dv]`` (..., 2 hd, L) per key from ``y = sum_i E[i, j] key_weights_i`` and the values ``v``."""
    a = y[..., :hd * hd, :].unflatten(-2, (hd, hd))
    dk = (a * v[..., None, :, :]).sum(dim=-2).add_(y[..., hd * hd:hd * hd + hd, :])
    return torch.cat([dk, y[..., hd * hd + hd:, :]], dim=-2)


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
        w = block.w_pack.view(nh, self.rows, d)
        self.w_pack_t = block.w_pack.T.contiguous()  # (D, H * rows): h @ w_pack_t = per-token packed rows
        self.b_pack = block.b_pack.view(-1)
        # backward of the projection: [dq, dk, dv] per head -> dh; ln 2 of d exp2 folded into the q and k rows
        w_bwd = w[:, : 3 * hd].clone()
        w_bwd[:, : 2 * hd] *= math.log(2.0)
        self.w_bwd = w_bwd.reshape(nh * 3 * hd, d).contiguous()
        self.w_out_t, self.b_out = block.w_out_t, block.b_out  # x1 = x + b_out + o @ w_out_t
        self.w_out = block.w_out_t.T.contiguous()
        self.w_m_t, self.b_m = block.w_m_t, block.b_m  # m = LN2(x1) @ w_m_t + b_m
        self.w_m = block.w_m_t.T.contiguous()

    def tail(self, x1: torch.Tensor) -> tuple[torch.Tensor, TailSaved]:
        """``x1 + relu(MLP(LN2(x1)))`` over (M, P, D) tokens of M points, and what its backward needs."""
        h2, mean, rstd = layer_norm(x1, self.eps2)
        r = torch.addmm(self.b_m, h2.view(-1, self.n_dims), self.w_m_t).relu_().view(x1.shape)
        return x1 + r, TailSaved(x1, mean, rstd, r)

    def tail_backward(self, dx2: torch.Tensor, s: TailSaved) -> torch.Tensor:
        """Gradient with respect to ``x1`` from the gradient with respect to the block's output."""
        dh2 = torch.mm(relu_backward(dx2, s.r).view(-1, self.n_dims), self.w_m).view(dx2.shape)
        return layer_norm_backward(dh2, s.x1, s.mean, s.rstd).add_(dx2)

    def scores(self, t: torch.Tensor) -> torch.Tensor:
        """``E^T`` (B, L_key, L_query) for packed rows ``t`` (B, rows, L). Without the score bound it is
        shifted by the maximum over keys (softmax is shift-invariant, and so is its gradient)."""
        hd = self.head_dim
        s = torch.bmm(t[:, hd:2 * hd].transpose(1, 2), t[:, :hd])
        if not self.use_exp2:
            s = s.sub_(s.amax(dim=1, keepdim=True))
        return s.exp2_()

    def attend(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention among the ``L`` tokens of ``t``: ``E^T`` and the sums ``N`` (B, 2 hd + 1 + hd^2, L_query)."""
        e_t = self.scores(t)
        return e_t, torch.bmm(key_values(t, self.head_dim), e_t)

    def attend_backward(self, t: torch.Tensor, e_t: torch.Tensor, n: torch.Tensor, dn1: torch.Tensor) -> torch.Tensor:
        """``[dq, dk, dv]`` (B, 3 hd, L) of :meth:`attend` from ``[dN, dZ]`` (B, hd + 1, L_query)."""
        hd = self.head_dim
        y = torch.bmm(key_weights(t[:, :hd], dn1, hd), e_t.transpose(1, 2))  # (B, hd^2 + 2 hd, L_key)
        return torch.cat([query_grad(n, dn1, hd), key_grad(y, t[:, 2 * hd:3 * hd], hd)], dim=1)


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
    n: torch.Tensor  # (M H, 2 hd + 1 + hd^2, P_query)
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
        o_t = n[:, :hd] / n[:, hd:hd + 1]
        x1 = torch.baddbmm(x + self.b_out, o_t.view(m, d, p).transpose(1, 2), self.w_out_t.expand(m, -1, -1))
        x2, tail = self.tail(x1)
        return x2, DenseSaved(x, mean, rstd, t, e_t, n, o_t, tail)

    def backward(self, dx2: torch.Tensor, s: DenseSaved) -> torch.Tensor:
        """Gradient with respect to the block's input, (M, P, D)."""
        m, p, d = dx2.shape
        hd, nh = self.head_dim, self.n_heads
        dx1 = self.tail_backward(dx2, s.tail)
        do_t = torch.bmm(self.w_out_t.expand(m, -1, -1), dx1.transpose(1, 2)).view(m * nh, hd, p)
        dn1 = denominator_backward(do_t, s.n, s.o_t)
        dt = self.attend_backward(s.t, s.e_t, s.n, dn1).view(m, nh * 3 * hd, p)
        dh = torch.bmm(dt.transpose(1, 2), self.w_bwd.expand(m, -1, -1))  # (M, P, D)
        return layer_norm_backward(dh, s.x, s.mean, s.rstd).add_(dx1)
