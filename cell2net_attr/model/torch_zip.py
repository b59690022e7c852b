"""Reading the tensors and plain containers of a ``torch.save`` zip file, fast and without running code.

``torch.load(weights_only=True)`` is safe but unpickles in pure Python: a Cell2Net checkpoint
carries upstream's ``results`` (one entry per training cell, three times over), and on a 10k-cell
atlas that alone takes tens of milliseconds per gene. Here the standard C unpickler does the
work, restricted as the ``pickle`` documentation describes ("Restricting Globals"): the only
globals it can resolve are ``collections.OrderedDict``, the storage types and torch's tensor
rebuild, which is replaced by :func:`_rebuild_tensor` (type and bounds checks, then a view of
the record's bytes). Every callable the pickle can reach is one of those, so it cannot run code.

Anything this reader does not know (another global, a legacy or big-endian file, tensor
metadata) raises :class:`Unsupported`; the caller then falls back to ``torch.load``.
"""

from __future__ import annotations

import collections
import copyreg
import io
import pickle
import sys
import zipfile

import torch

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class Unsupported(Exception):
    """The file is not of the plain kind this reader handles; use ``torch.load``."""


class _StorageType:
    """What the pickle names as a storage class: only its dtype matters."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _Storage:
    """One record's bytes, typed."""

    def __init__(self, data: bytes, dtype: torch.dtype, numel: int) -> None:
        if len(data) != numel * dtype.itemsize:
            raise Unsupported(f"storage of {numel} elements has {len(data)} bytes")
        self.flat = torch.frombuffer(bytearray(data), dtype=dtype) if numel else torch.empty(0, dtype=dtype)


def _rebuild_tensor(storage, offset, size, stride, requires_grad, hooks, metadata=None) -> torch.Tensor:
    """A tensor viewing ``storage``, after checking every argument (torch's ``_rebuild_tensor_v2``'s)."""
    if not isinstance(storage, _Storage) or not _is_int(offset) or offset < 0:
        raise Unsupported("tensor rebuilt from something other than a storage")
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
            and all(_is_int(s) and s >= 0 for s in size + stride)):
        raise Unsupported("tensor with a malformed size or stride")
    if not isinstance(requires_grad, bool) or hooks or metadata:
        raise Unsupported("tensor with gradients, hooks or metadata")
    extent = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
    if extent > storage.flat.numel():
        raise Unsupported("tensor reaches past its storage")
    return storage.flat.as_strided(size, stride, offset)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, records: dict[str, bytes]) -> None:
        super().__init__(io.BytesIO(data))
        self.records = records
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        raise Unsupported(f"global {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and _is_int(pid[4])):
            raise Unsupported("persistent id other than a storage")
        _, kind, key, _location, numel = pid
        if key not in self.storages:
            if key not in self.records:
                raise Unsupported(f"no record for storage {key}")
            self.storages[key] = _Storage(self.records[key], kind.dtype, numel)
        return self.storages[key]


def load(raw: bytes) -> object:
    """The object a ``torch.save`` zip file holds, its tensors on the CPU.

    Raises :class:`Unsupported` for anything but the plain case; other exceptions mean a damaged
    file, which ``torch.load`` should then be the one to describe.
    """
    # pickle's extension codes resolve through a process-wide cache that find_class never sees
    if copyreg._inverted_registry:  # noqa: SLF001 - empty unless some library registered codes
        raise Unsupported("pickle extension codes are registered in this process")
    if sys.byteorder != "little" or not zipfile.is_zipfile(io.BytesIO(raw)):
        raise Unsupported("not a little-endian zip checkpoint")
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise Unsupported("not exactly one data.pkl")
        prefix = pkls[0][: -len("data.pkl")]
        names = set(zf.namelist())
        if f"{prefix}byteorder" in names and zf.read(f"{prefix}byteorder") != b"little":
            raise Unsupported("big-endian storages")
        data_dir = f"{prefix}data/"
        records = {n[len(data_dir):]: zf.read(n) for n in names if n.startswith(data_dir)}
        pickled = zf.read(pkls[0])
    return _Unpickler(pickled, records).load()
