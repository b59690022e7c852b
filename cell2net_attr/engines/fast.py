"""The fast engine: IG where only the head sees the path.

Along the IG path only the TF expression moves, and it enters the model at the head's
first Linear layer. So the sequence encoder runs once per gene (eval-mode normalisation
is per sample), the peak encoder (:class:`PeakEncoder`: merge and attention) once per cell,
and the first Linear once per cell, its distance and bias terms once per gene: its
pre-activation along the path is ``a + alpha * u`` with ``a = W x(tf=0) + b`` and
``u = W_tf tf``. Only the rest of the head is evaluated at the ``n_steps`` points; for
upstream's ReLU -> BatchNorm -> Dropout -> Linear head its gradient with respect to the
pre-activation is a constant row masked by the open ReLUs, so no autograd is needed. Pulled
back through ``W_tf``, it is the gradient captum integrates. The quadrature nodes and
weights are captum's own.

``method="exact"``: for a head ReLU -> BatchNorm(eval) -> Dropout(eval) -> Linear the
gradient along the path is piecewise constant, so the integral is exact in closed form:
hidden unit ``j`` contributes for the fraction of [0, 1] on which ``a_j + alpha u_j > 0``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from ..model.architecture import Cell2NetModule
from .base import IGParams
from .peak_encoder import PeakEncoder
from .quadrature import quadrature


class GeneHead:
    """What a structured engine precomputes once per gene: the peak encoder, the head's first Linear split
    by input (its distance and bias terms folded into one constant row), the gradient row of the rest of the
    head (``head_scale``: None for a head of another shape, differentiated by autograd) and captum's
    quadrature."""

    name = "fast"

    def __init__(self, module: nn.Module, peak_seq: torch.Tensor, peak_dist: torch.Tensor,
                 params: IGParams) -> None:
        self.params = params
        if not isinstance(module, Cell2NetModule):
            raise UserError(f"the fast engine needs a Cell2Net module, got {type(module).__name__}", param="engine")
        first = module.fc[0]
        if not isinstance(first, nn.Linear):
            raise UserError("the head does not start with a Linear layer", param="engine")
        self.module, self.rest, spec = module.eval(), module.fc[1:], module.spec
        self.head_scale = _standard_head_scale(self.rest)
        w = first.weight.detach()
        n_enc = spec.n_peaks * spec.n_dims
        self.w_peaks_t = w[:, :n_enc].T.contiguous()  # (P*D, H)
        self.w_tf = w[:, module.tf_slice()]  # (H, T)
        self.w_cov_t = w[:, module.tf_slice().stop:].T.contiguous()  # (C, H)
        with torch.no_grad():
            self.encoder = PeakEncoder(module, module.seq_encoder.forward_inference(peak_seq.unsqueeze(0)))
            self.const = (peak_dist @ w[:, n_enc : n_enc + spec.n_peaks].T + first.bias.detach()).unsqueeze(0)
        if params.method != "exact":
            alphas, steps = quadrature(params.method, params.n_steps)
            self.alphas = torch.tensor(alphas, dtype=w.dtype, device=peak_dist.device)
            self.steps = torch.tensor(steps, dtype=w.dtype, device=peak_dist.device)

    @torch.no_grad()
    def preactivation(self, peak_acc: torch.Tensor, tf_exp: torch.Tensor, covariates: torch.Tensor) -> torch.Tensor:
        """The head's first Linear at the cells' own inputs, (B, H): what its BatchNorm saw in training."""
        z = torch.addmm(self.const, self.encoder(peak_acc), self.w_peaks_t).addmm_(tf_exp, self.w_tf.T)
        return z.addmm_(covariates, self.w_cov_t) if covariates.shape[1] else z


class FastEngine(GeneHead):
    """Structured IG over TF expression for a :class:`Cell2NetModule` in eval mode."""

    def __init__(self, module: nn.Module, peak_seq: torch.Tensor, peak_dist: torch.Tensor,
                 params: IGParams) -> None:
        super().__init__(module, peak_seq, peak_dist, params)
        if params.method == "exact" and self.head_scale is None:
            _exact_head_scale(self.rest)  # raises, naming the head's layers

    @torch.no_grad()
    def _path(self, peak_acc: torch.Tensor, tf_exp: torch.Tensor, covariates: torch.Tensor):
        """Pre-activation of the head at the baseline (``a``) and its direction (``u``)."""
        a = torch.addmm(self.const, self.encoder(peak_acc), self.w_peaks_t)
        if covariates.shape[1]:
            a = a.addmm_(covariates, self.w_cov_t)
        return a, tf_exp @ self.w_tf.T

    def _integrated_grad(self, a: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Integral over the path of d output / d pre-activation, (B, H)."""
        if self.params.method == "exact":
            return self.head_scale * _active_fraction(a, u)
        if self.head_scale is not None:
            # ReLU -> BatchNorm -> Dropout -> Linear in eval: the gradient is scale where the ReLU is open
            active = (a.unsqueeze(1) + self.alphas.view(1, -1, 1) * u.unsqueeze(1)) > 0  # (B, K, H)
            return torch.einsum("bkh,k->bh", active.to(a.dtype), self.steps) * self.head_scale
        b, h = a.shape
        points = (a.unsqueeze(1) + self.alphas.view(1, -1, 1) * u.unsqueeze(1)).reshape(-1, h)
        points.requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.rest(points).sum(), points)
        return (grad.view(b, -1, h) * self.steps.view(1, -1, 1)).sum(dim=1)

    def attribute(self, peak_acc: torch.Tensor, tf_exp: torch.Tensor, covariates: torch.Tensor):
        """Attributions for one batch, and the convergence delta when asked."""
        a, u = self._path(peak_acc, tf_exp, covariates)
        grads = self._integrated_grad(a, u) @ self.w_tf  # (B, T): integrated d output / d tf
        attr = grads * tf_exp if self.params.multiply_by_inputs else grads
        delta = None
        if self.params.return_delta:
            with torch.no_grad():
                delta = attr.sum(dim=1) - (self.rest(a + u) - self.rest(a))[:, 0]
        return attr.detach(), delta


def _standard_head_scale(rest: nn.Sequential) -> torch.Tensor | None:
    """``_exact_head_scale`` for upstream's head, ``None`` for any other."""
    try:
        return _exact_head_scale(rest)
    except UserError:
        return None


def _exact_head_scale(rest: nn.Sequential) -> torch.Tensor:
    """d output / d ReLU output for a ReLU -> BatchNorm1d -> Dropout -> Linear(H, 1) head in eval."""
    kinds = [type(m) for m in rest]
    if kinds != [nn.ReLU, nn.BatchNorm1d, nn.Dropout, nn.Linear] or rest[3].out_features != 1:
        names = " -> ".join(k.__name__ for k in kinds)
        raise UserError(f"the exact method needs a ReLU -> BatchNorm1d -> Dropout -> Linear(., 1) head, "
                        f"this one is {names}", param="method")
    bn, out = rest[1], rest[3]
    if bn.training or not bn.track_running_stats or bn.running_var is None:
        raise UserError("the exact method needs BatchNorm with running statistics, in eval mode", param="method")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    return (scale * out.weight[0]).detach().unsqueeze(0)  # (1, H)


def _active_fraction(a: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Measure of {alpha in [0, 1] : a + alpha * u > 0}, elementwise."""
    safe_u = torch.where(u == 0, torch.ones_like(u), u)
    root = (-a / safe_u).clamp(0.0, 1.0)
    frac = torch.where(u > 0, 1.0 - root, root)
    return torch.where(u == 0, (a > 0).to(a.dtype), frac)
