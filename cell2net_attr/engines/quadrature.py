"""The integration nodes and weights of Integrated Gradients, as captum computes them.

The fast engines must integrate exactly as the reference does, so the nodes are captum's to the last bit: the
Riemann nodes are float32 (captum builds them with ``torch.linspace``), the weights ``1/n`` (halved at both ends
for the trapezoid); Gauss-Legendre's come from numpy's ``leggauss`` mapped from [-1, 1] to [0, 1]. Computed
here rather than imported from captum, whose import (1-2 s, matplotlib included) every ``run`` process would
otherwise pay before its first cell; ``tests/test_engine.py`` checks them against captum's own.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

#: The Riemann rules' first and last node for ``n`` steps.
_RIEMANN = {
    "riemann_left": lambda n: (0.0, 1 - 1 / n),
    "riemann_right": lambda n: (1 / n, 1.0),
    "riemann_middle": lambda n: (1 / (2 * n), 1 - 1 / (2 * n)),
    "riemann_trapezoid": lambda n: (0.0, 1.0),
}


@functools.lru_cache(maxsize=64)
def quadrature(method: str, n_steps: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Nodes ``alphas`` in [0, 1] and weights ``steps`` of ``method`` with ``n_steps`` points (immutable: cached
    for every gene)."""
    if method == "gausslegendre":
        if n_steps < 1:
            raise ValueError(f"gausslegendre needs at least one step, got {n_steps}")
        nodes, weights = np.polynomial.legendre.leggauss(n_steps)
        return tuple((0.5 * (1 + nodes)).tolist()), tuple((0.5 * weights).tolist())
    if method not in _RIEMANN:
        raise ValueError(f"unknown integration method {method!r}")
    if n_steps < 2:
        raise ValueError(f"{method} needs at least two steps, got {n_steps}")
    first, last = _RIEMANN[method](n_steps)
    steps = [1 / n_steps] * n_steps
    if method == "riemann_trapezoid":
        steps[0] /= 2
        steps[-1] /= 2
    return tuple(torch.linspace(first, last, n_steps).tolist()), tuple(steps)
