"""The engines by name, each with what it supports; choosing one checks the run parameters against it.

Engines are imported only when built, so that listing them (``--help``) never loads torch or captum.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UserError
from .base import METHODS, MODULE_MODES, QUADRATURE_METHODS, TARGETS, Engine, IGParams

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class EngineInfo:
    """An engine's name, what it supports, its default batch and where its class lives."""

    name: str
    summary: str
    methods: tuple[str, ...]
    module_modes: tuple[str, ...]
    factories: dict[str, str]  # target -> "module:Class", imported on first use
    default_batch: int
    compute_block: int | None = None  # cells per engine call; None = exactly the batch size (upstream's batches)

    @property
    def targets(self) -> tuple[str, ...]:
        """What the engine attributes."""
        return tuple(self.factories)

    def check(self, params: IGParams) -> None:
        """Raise :class:`UserError`, naming the parameter, for what this engine cannot do."""
        if params.method not in self.methods:
            other = next((e.name for e in ENGINES.values() if params.method in e.methods), None)
            hint = f": use engine '{other}' (--engine {other})" if other else ""
            raise UserError(f"the {self.name} engine does not support method '{params.method}'{hint}",
                            param="method")
        if params.module_mode not in self.module_modes:
            other = next((e.name for e in ENGINES.values() if params.module_mode in e.module_modes), None)
            hint = f": train mode is stochastic and runs only on engine '{other}' (--engine {other})" if other else ""
            raise UserError(f"the {self.name} engine does not run in {params.module_mode} mode{hint}",
                            param="module_mode")
        if params.target not in self.targets:
            raise UserError(f"the {self.name} engine does not attribute '{params.target}'", param="target")
        if params.target == "peaks" and params.method == "exact":
            raise UserError("the exact method is for TF attributions (--target tfs) only", param="method")


ENGINES: dict[str, EngineInfo] = {
    "fast": EngineInfo("fast", "structured IG: only what lies on the path is recomputed", METHODS, ("eval",),
                       {"tfs": "fast:FastEngine", "peaks": "fast_peaks:FastPeakEngine"}, 256, compute_block=512),
    "captum": EngineInfo("captum", "captum over the whole module, as upstream runs it (the reference)",
                         QUADRATURE_METHODS, MODULE_MODES, {t: "captum:CaptumEngine" for t in TARGETS}, 4),
}


def engine_info(name: str) -> EngineInfo:
    """The registered engine ``name``."""
    if name not in ENGINES:
        raise UserError(f"unknown engine '{name}', choose from {', '.join(ENGINES)}", param="engine")
    return ENGINES[name]


def check_engine(name: str, params: IGParams | None = None) -> EngineInfo:
    """The engine ``name``, after checking that it supports ``params``."""
    info = engine_info(name)
    if params is not None:
        info.check(params)
    return info


def make_engine(name: str, module: torch.nn.Module, peak_seq: torch.Tensor, peak_dist: torch.Tensor,
                params: IGParams) -> Engine:
    """Build the engine ``name`` for a module whose shared inputs are on its device."""
    info = check_engine(name, params)
    module_name, class_name = info.factories[params.target].split(":")
    cls = getattr(importlib.import_module(f"{__package__}.{module_name}"), class_name)
    return cls(module, peak_seq, peak_dist, params)


@dataclass(frozen=True)
class PredictorInfo:
    """An engine of predicted rates for base changes (mutagenesis, variants): its name, summary and class."""

    name: str
    summary: str
    factory: str  # "module:Class", imported on first use


PREDICTORS: dict[str, PredictorInfo] = {
    "fast": PredictorInfo("fast", "structured: the sequence tower once per mutant, one token per cell, "
                                  "a rank-one attention update", "mutagenesis:MutagenesisEngine"),
    "reference": PredictorInfo("reference", "the whole module for every cell and mutant, as upstream's predict "
                                            "runs it (slow: the referee)", "predict:PredictEngine"),
}


def make_predictor(name: str, module: torch.nn.Module, peak_seq: torch.Tensor, peak_dist: torch.Tensor):
    """Build the rate engine ``name`` for a module whose shared inputs are on its device."""
    if name not in PREDICTORS:
        raise UserError(f"unknown engine '{name}', choose from {', '.join(PREDICTORS)}", param="engine")
    module_name, class_name = PREDICTORS[name].factory.split(":")
    cls = getattr(importlib.import_module(f"{__package__}.{module_name}"), class_name)
    return cls(module, peak_seq, peak_dist)
