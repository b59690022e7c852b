"""The reference engine: captum's ``IntegratedGradients`` over the whole module, as upstream runs it.

Every input is handed to captum; all but the target (TF expression, or peak accessibility) have
baselines equal to themselves, so only the target moves along the path, from zero. This is slow by design: it
stays the referee every faster engine is tested against.
"""

from __future__ import annotations

import copy
import warnings

import torch
from captum.attr import IntegratedGradients

from .base import IGParams


class CaptumEngine:
    """captum IG over ``module(peak_seq, peak_acc, peak_dist, tf_exp, covariates)``."""

    name = "captum"

    def __init__(self, module: torch.nn.Module, peak_seq: torch.Tensor, peak_dist: torch.Tensor,
                 params: IGParams) -> None:
        self.params = params
        self.peak_seq = peak_seq
        self.peak_dist = peak_dist
        if params.module_mode == "train":
            # A private copy: train-mode forwards update BatchNorm statistics, never the user's weights.
            module = copy.deepcopy(module).train()
            warnings.warn("module in train mode: dropout and batch statistics make attributions stochastic",
                          stacklevel=3)
            if params.seed is not None:
                torch.manual_seed(params.seed)
        else:
            module = module.eval()
        self.module = module
        self.ig = IntegratedGradients(module, multiply_by_inputs=params.multiply_by_inputs)

    def attribute(self, peak_acc: torch.Tensor, tf_exp: torch.Tensor, covariates: torch.Tensor):
        """Attributions for one batch; the delta uses the same module."""
        b = peak_acc.shape[0]
        seq = self.peak_seq.unsqueeze(0).expand(b, *self.peak_seq.shape)
        dist = self.peak_dist.unsqueeze(0).expand(b, -1)
        peaks = self.params.target == "peaks"  # the input that moves from zero; the others are their own baseline
        base_acc = torch.zeros_like(peak_acc) if peaks else peak_acc
        base_tf = tf_exp if peaks else torch.zeros_like(tf_exp)
        attrs = self.ig.attribute(
            inputs=(seq, peak_acc, dist, tf_exp),
            baselines=(seq, base_acc, dist, base_tf),
            additional_forward_args=(covariates,),
            n_steps=self.params.n_steps,
            method=self.params.method,
        )
        attr = attrs[1 if peaks else 3].detach()
        delta = None
        if self.params.return_delta:
            with torch.no_grad():
                fx = self.module(seq, peak_acc, dist, tf_exp, covariates)[:, 0]
                f0 = self.module(seq, base_acc, dist, base_tf, covariates)[:, 0]
            delta = attr.sum(dim=1) - (fx - f0)
        return attr, delta
