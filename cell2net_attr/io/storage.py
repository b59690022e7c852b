"""How the values of a per-cell output are stored: their type (``--dtype``) and compression (``--compression``).

``float16`` halves the bytes of ``float32`` (about 3 significant digits: a relative rounding of at most
2**-11, and values below 6e-5 lose relative precision, down to 6e-8); readers give the values back as
float32. Compression applies to HDF5 and AnnData outputs (``.h5``/``.hdf5``/``.h5ad``), chunked by rows as
they are written; with HDF5's byte shuffle before it, which groups the bytes of equal significance. A
``.npy`` is a plain array: it has a type, but no compression.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError

DTYPES = ("float32", "float16")
COMPRESSIONS = ("none", "gzip", "lzf")


@dataclass(frozen=True)
class Storage:
    """The type and compression of an output's values."""

    dtype: str = "float32"
    compression: str = "none"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise UserError(f"unknown value type {self.dtype!r}, choose from {', '.join(DTYPES)}", param="dtype")
        if self.compression not in COMPRESSIONS:
            raise UserError(f"unknown compression {self.compression!r}, choose from {', '.join(COMPRESSIONS)}",
                            param="compression")

    @property
    def numpy_dtype(self) -> np.dtype:
        """The numpy type of the stored values."""
        return np.dtype(self.dtype)

    @property
    def itemsize(self) -> int:
        """Bytes per value, uncompressed."""
        return self.numpy_dtype.itemsize

    def dataset_options(self) -> dict:
        """``h5py.create_dataset`` keywords for the values (type and filters)."""
        options: dict = {"dtype": self.numpy_dtype}
        if self.compression != "none":
            options.update(compression=self.compression, shuffle=True)
        return options

    def cast(self, values: np.ndarray) -> np.ndarray:
        """``values`` as they are stored (rounded to float16 for ``float16``)."""
        return values if values.dtype == self.numpy_dtype else values.astype(self.numpy_dtype)

    def check(self, fmt_name: str, where: str | None = None) -> None:
        """Refuse compression for a ``.npy`` output (``where``: the output path, else the flag is named)."""
        if self.compression != "none" and fmt_name == "npy":
            message = (f"{self.compression} is for .h5/.hdf5/.h5ad outputs; a .npy is a plain array (use --format "
                       f"h5, or --dtype float16 alone)")
            if where:
                raise UserError(f"--compression {message}", where)
            raise UserError(message, param="compression")
