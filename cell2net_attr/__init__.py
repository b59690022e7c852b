"""cell2net-attr: Integrated-Gradients attributions for Cell2Net checkpoints, fast and safe.

The notebook API (:func:`load_model`, :func:`tf_attr`, :func:`peak_attr`, :func:`saturation_mutagenesis`,
:func:`score_variants`, :func:`set_threads`, and the tables
:func:`tf_to_gene`, :func:`peak_to_gene`, :func:`get_top_tfs`) is imported on first use, so that
``import cell2net_attr`` and the light commands (``--help``, downstream tables) never load torch.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__

__all__ = ["AttributionModel", "load_model", "peak_attr", "tf_attr", "saturation_mutagenesis", "score_variants",
           "set_threads", "tf_to_gene", "peak_to_gene", "get_top_tfs", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("AttributionModel", "load_model", "peak_attr", "tf_attr", "saturation_mutagenesis", "score_variants",
                "set_threads"):
        from . import api

        return getattr(api, name)
    if name in ("tf_to_gene", "peak_to_gene", "get_top_tfs"):  # tables only: no torch
        from .downstream import to_gene

        return getattr(to_gene, name)
    raise AttributeError(f"module 'cell2net_attr' has no attribute {name!r}")
