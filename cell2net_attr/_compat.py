"""The one home of imports from other packages' private or version-dependent modules.

Each helper names what it needs, imports it lazily (so that light commands stay light) and turns a
missing module into a clear error instead of an ``ImportError`` deep inside a run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


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

