"""Choosing the torch device from ``auto|cpu|cuda|cuda:N``."""

from __future__ import annotations

import re

import torch

from ..errors import UserError


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``auto`` is CUDA when available, else CPU; an explicit CUDA device must exist."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not m:
        raise UserError(f"unknown device '{name}', expected auto, cpu, cuda or cuda:N", param="device")
    if not torch.cuda.is_available():
        raise UserError(f"'{name}' requested but no CUDA GPU is available (torch {torch.__version__})", param="device")
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise UserError(f"'{name}' requested but only {torch.cuda.device_count()} GPU(s) are visible", param="device")
    return torch.device(f"cuda:{index}")
