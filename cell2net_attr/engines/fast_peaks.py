"""The fast engine for peak accessibility (upstream's ``peak_attr``): IG where only accessibility moves.

Along the path ``alpha * acc`` the sequences, distances, TF expression and covariates are fixed. So the
sequence encoder runs once per gene, and the merge is the peak encoder's exact tables (the first merge
layer along the path is ``S + alpha * acc * w_acc``). Each of the ``n_steps`` points then costs the rest
of the merge, the attention and the head, forward and backward: the points of several cells are batched
into one autograd pass. The quadrature nodes and weights are captum's own.
"""

from __future__ import annotations

import functools

import torch

from .fast import GeneHead

#: Path points per autograd pass (cells x steps): bounds the memory autograd keeps.
POINTS_PER_PASS = 2048


class FastPeakEngine(GeneHead):
    """Structured IG over peak accessibility for a :class:`Cell2NetModule` in eval mode."""

    @functools.cached_property
    def w_rest_t(self) -> torch.Tensor:
        """The head's TF and covariate columns, (T + C, H): fixed along this path."""
        return torch.cat([self.w_tf.T, self.w_cov_t])

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
