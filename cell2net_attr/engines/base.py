"""The IG engine interface, its parameters, and the registry of engines.

An engine is built once per gene from the module and the gene's shared inputs (peak
sequences and distances) and then called batch after batch with the per-cell inputs.
It returns the attributions for the TF-expression input and, when asked, the
convergence delta ``sum(attr) - (F(x) - F(baseline))`` per cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ..errors import UserError

QUADRATURE_METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
METHODS = QUADRATURE_METHODS + ("exact",)
ENGINES = ("fast", "captum")
MODULE_MODES = ("eval", "train")


@dataclass(frozen=True)
class IGParams:
    """What defines an attribution run, whatever the engine."""

    n_steps: int = 100
    method: str = "gausslegendre"
    multiply_by_inputs: bool = True
    module_mode: str = "eval"
    seed: int | None = None
    return_delta: bool = False

    def validate(self) -> IGParams:
        """Raise :class:`UserError` for values no engine accepts."""
        if isinstance(self.n_steps, bool) or not isinstance(self.n_steps, int) or self.n_steps < 1:
            raise UserError(f"must be an integer >= 1, got {self.n_steps!r}", "--n-steps")
        if self.method.startswith("riemann") and self.n_steps < 2:
            raise UserError(f"the {self.method} method needs at least 2 steps", "--n-steps")
        if self.method not in METHODS:
            raise UserError(f"unknown method '{self.method}', choose from {', '.join(METHODS)}", "--method")
        if self.module_mode not in MODULE_MODES:
            raise UserError(f"unknown module mode '{self.module_mode}', choose eval or train", "--module-mode")
        return self


class Engine(Protocol):
    """Attributions for one gene's module, batch by batch."""

    name: str

    def attribute(
        self, peak_acc: torch.Tensor, tf_exp: torch.Tensor, covariates: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T) attributions and an optional (B,) convergence delta."""
        ...


def check_engine(name: str) -> None:
    """``--engine`` names a known engine."""
    if name not in ENGINES:
        raise UserError(f"unknown engine '{name}', choose from {', '.join(ENGINES)}", "--engine")


def make_engine(
    name: str,
    module: torch.nn.Module,
    peak_seq: torch.Tensor,
    peak_dist: torch.Tensor,
    params: IGParams,
) -> Engine:
    """Build the engine ``name`` for a module whose shared inputs are on its device."""
    params.validate()
    check_engine(name)
    if name == "captum":
        from .captum import CaptumEngine

        if params.method == "exact":
            raise UserError("the exact method needs --engine fast (captum only integrates numerically)", "--method")
        return CaptumEngine(module, peak_seq, peak_dist, params)
    if params.module_mode == "train":
        raise UserError("train mode is stochastic and runs only on the reference engine: add --engine captum",
                        "--module-mode")
    from .fast import FastEngine

    return FastEngine(module, peak_seq, peak_dist, params)
