"""The fast engine for peak accessibility (upstream's ``peak_attr``): IG where only accessibility moves.

Along the path ``alpha * acc`` the sequences, distances, TF expression and covariates are fixed. So the
sequence encoder runs once per gene, and the merge is the peak encoder's exact tables (the first merge
layer along the path is ``S + alpha * acc * w_acc``). Each of the ``n_steps`` points then costs the rest
of the merge, the attention and the head, forward and backward: the points of several cells are batched
into one autograd pass. The quadrature nodes and weights are captum's own.
"""

from __future__ import annotations

import torch
from torch import nn

from .._compat import quadrature
from ..errors import UserError
from ..model.architecture import Cell2NetModule
from .base import IGParams
from .peak_encoder import PeakEncoder

#: Path points per autograd pass (cells x steps): bounds the memory autograd keeps.
POINTS_PER_PASS = 2048


class FastPeakEngine:
    """Structured IG over peak accessibility for a :class:`Cell2NetModule` in eval mode."""

    name = "fast"

    def __init__(self, module: nn.Module, peak_seq: torch.Tensor, peak_dist: torch.Tensor,
                 params: IGParams) -> None:
        if not isinstance(module, Cell2NetModule):
            raise UserError(f"the fast engine needs a Cell2Net module, got {type(module).__name__}", param="engine")
        self.module, self.params = module.eval(), params
        spec = module.spec
        first = module.fc[0]
        w = first.weight.detach()
        n_enc = spec.n_peaks * spec.n_dims
        self.w_peaks_t = w[:, :n_enc].T.contiguous()
        self.w_rest_t = w[:, n_enc + spec.n_peaks:].T.contiguous()  # TFs, then covariates
        self.rest = module.fc[1:]
        with torch.no_grad():
            self.encoder = PeakEncoder(module, module.encode_sequences(peak_seq.unsqueeze(0)))
            self.const = (peak_dist @ w[:, n_enc : n_enc + spec.n_peaks].T + first.bias.detach()).unsqueeze(0)
        alphas, steps = quadrature(params.method, params.n_steps)
        self.alphas = torch.tensor(alphas, dtype=w.dtype, device=peak_dist.device)
        self.steps = torch.tensor(steps, dtype=w.dtype, device=peak_dist.device)

    def _output(self, acc: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """The prediction (N,) for accessibility ``acc`` and the fixed part of the head's pre-activation."""
        z = torch.addmm(fixed, self.encoder(acc), self.w_peaks_t)
        return self.rest(z)[:, 0]

    def attribute(self, peak_acc: torch.Tensor, tf_exp: torch.Tensor, covariates: torch.Tensor):
        """Attributions (B, P) for one batch, and the convergence delta when asked."""
        fixed = self.const + torch.cat([tf_exp, covariates], dim=1) @ self.w_rest_t  # (B, H)
        k = len(self.alphas)
        per_pass = max(1, POINTS_PER_PASS // k)
        grads = []
        for a in range(0, len(peak_acc), per_pass):
            acc, fix = peak_acc[a : a + per_pass], fixed[a : a + per_pass]
            points = (self.alphas.view(1, -1, 1) * acc.unsqueeze(1)).reshape(-1, acc.shape[1])
            points.requires_grad_(True)
            with torch.enable_grad():
                out = self._output(points, fix.repeat_interleave(k, dim=0))
                (grad,) = torch.autograd.grad(out.sum(), points)
            grads.append((grad.view(len(acc), k, -1) * self.steps.view(1, -1, 1)).sum(dim=1))
        integrated = torch.cat(grads)
        attr = integrated * peak_acc if self.params.multiply_by_inputs else integrated
        delta = None
        if self.params.return_delta:
            with torch.no_grad():
                delta = attr.sum(dim=1) - (self._output(peak_acc, fixed) - self._output(torch.zeros_like(peak_acc),
                                                                                         fixed))
        return attr.detach(), delta
