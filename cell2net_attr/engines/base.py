"""What every IG engine shares: the run parameters (validated once, on construction) and the interface.

An engine is built once per gene from the module and the gene's shared inputs (peak sequences and
distances), then called batch after batch with the per-cell inputs. It returns the attributions
for its target input (TF expression, or peak accessibility) and, when asked, the convergence delta
``sum(attr) - (F(x) - F(baseline))`` per cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..errors import UserError

if TYPE_CHECKING:
    import torch

QUADRATURE_METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
METHODS = QUADRATURE_METHODS + ("exact",)
MODULE_MODES = ("eval", "train")
TARGETS = ("tfs", "peaks")


@dataclass(frozen=True)
class IGParams:
    """What defines an attribution run, whatever the engine; invalid values raise on construction."""

    n_steps: int = 100
    method: str = "gausslegendre"
    multiply_by_inputs: bool = True
    module_mode: str = "eval"
    seed: int | None = None
    return_delta: bool = False
    target: str = "tfs"

    def __post_init__(self) -> None:
        if isinstance(self.n_steps, bool) or not isinstance(self.n_steps, int) or self.n_steps < 1:
            raise UserError(f"must be an integer >= 1, got {self.n_steps!r}", param="n_steps")
        if self.method not in METHODS:
            raise UserError(f"unknown method '{self.method}', choose from {', '.join(METHODS)}", param="method")
        if self.method.startswith("riemann") and self.n_steps < 2:
            raise UserError(f"the {self.method} method needs at least 2 steps", param="n_steps")
        if self.module_mode not in MODULE_MODES:
            raise UserError(f"unknown module mode '{self.module_mode}', choose eval or train", param="module_mode")
        if self.target not in TARGETS:
            raise UserError(f"unknown target '{self.target}', choose from {', '.join(TARGETS)}", param="target")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise UserError(f"must be an integer, got {self.seed!r}", param="seed")


class Engine(Protocol):
    """Attributions for one gene's module, batch by batch."""

    name: str

    def attribute(
        self, peak_acc: torch.Tensor, tf_exp: torch.Tensor, covariates: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, features) attributions and an optional (B,) convergence delta."""
        ...
