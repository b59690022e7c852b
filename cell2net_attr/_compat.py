"""The one home of imports from other packages' private or version-dependent modules.

Each helper names what it needs, imports it lazily (so that light commands stay light) and turns a
missing module into a clear error instead of an ``ImportError`` deep inside a run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


@functools.lru_cache(maxsize=64)
def quadrature(method: str, n_steps: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """captum's integration nodes ``alphas`` in [0, 1] and weights ``steps`` for ``method``.

    The fast engines use captum's own quadrature so that they integrate exactly as the reference does.
    """
    try:
        from captum.attr._utils.approximation_methods import approximation_parameters
    except ImportError as exc:  # captum moved its private module: fail loudly, never integrate differently
        raise RuntimeError(f"this captum ({_version('captum')}) has no approximation_parameters; "
                           f"install captum>=0.7,<1") from exc
    step_fn, alpha_fn = approximation_parameters(method)
    return tuple(alpha_fn(n_steps)), tuple(step_fn(n_steps))  # immutable: cached for every gene


def read_elem(elem: Any) -> Any:
    """anndata's reader of one on-disk element."""
    return _anndata("read_elem")(elem)


def write_elem(group: Any, key: str, value: Any) -> None:
    """anndata's writer of one element into an open HDF5 group."""
    _anndata("write_elem")(group, key, value)


def sparse_dataset(group: Any) -> Any:
    """anndata's backed sparse matrix over an HDF5 group."""
    return _anndata("sparse_dataset")(group)


def anndata_read_errors() -> tuple[type[Exception], ...]:
    """anndata's error for an element it has no reader for (a corrupt or foreign encoding attribute)."""
    try:
        from anndata._io.specs.registry import IORegistryError
    except ImportError:  # a future anndata moved it; its errors then count as internal
        return ()
    return (IORegistryError,)


def click_exceptions() -> Any:
    """The click exceptions module that typer raises (typer >= 0.20 bundles its own click)."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def click_context() -> Any:
    """The click context of the command being run (None outside one)."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:
        from click import get_current_context
    return get_current_context(silent=True)


def _anndata(name: str) -> Callable:
    import anndata.io  # anndata >= 0.11 (the declared floor)

    return getattr(anndata.io, name)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"
