"""Reading the tensors and plain containers of a ``torch.save`` zip file, fast and without running code.

``torch.load(weights_only=True)`` is safe but unpickles in pure Python: a Cell2Net checkpoint
carries upstream's ``results`` (one entry per training cell, three times over), and on a 10k-cell
atlas that alone takes tens of milliseconds per gene. Here the standard C unpickler does the
work, restricted as the ``pickle`` documentation describes ("Restricting Globals"): the only
globals it can resolve are ``collections.OrderedDict``, the storage types and torch's tensor
rebuild, which is replaced by :class:`_RebuildTensor` (type and bounds checks, then a view of
the record's bytes). Every callable the pickle can reach is one of those, so it cannot run code;
a BUILD opcode on this module's objects is refused, and one that changed a tensor after it was
built (``Tensor.__setstate__``) is caught after loading.

Anything this reader does not know (another global, a legacy or big-endian file, tensor
metadata) raises :class:`Unsupported`; the caller then falls back to ``torch.load``.
"""

from __future__ import annotations

import collections
import copyreg
import io
import pickle
import struct
import sys
import zipfile
import zlib

import torch

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


#: A zip member's local file header (APPNOTE 4.3.7): signature, versions, flags, method, time, date, CRC-32,
#: sizes, name and extra-field lengths.
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")


class Unsupported(Exception):
    """The file is not of the plain kind this reader handles; use ``torch.load``."""


class _Sealed:
    """Objects of this module a pickle can reach: a BUILD opcode on them is refused."""

    __slots__ = ()

    def __setstate__(self, state) -> None:
        raise Unsupported("BUILD on a storage or the tensor rebuild")


class _StorageType(_Sealed):
    """What the pickle names as a storage class: only its dtype matters."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _Storage(_Sealed):
    """One record's bytes, typed, in a buffer that cannot be resized."""

    __slots__ = ("flat",)

    def __init__(self, data: bytes | memoryview, dtype: torch.dtype, numel: int) -> None:
        if len(data) != numel * dtype.itemsize:
            raise Unsupported(f"storage of {numel} elements has {len(data)} bytes")
        # an empty storage views a one-element buffer: torch.empty(0) could be grown by a set_ later
        self.flat = torch.frombuffer(bytearray(data or bytes(dtype.itemsize)), dtype=dtype)[:numel]


class _RebuildTensor(_Sealed):
    """torch's ``_rebuild_tensor_v2``, checked: a view of a :class:`_Storage`; records what it made."""

    __slots__ = ("made",)

    def __init__(self) -> None:
        self.made: list[tuple[torch.Tensor, tuple]] = []

    def __call__(self, storage, offset, size, stride, requires_grad, hooks, metadata=None) -> torch.Tensor:
        if not isinstance(storage, _Storage) or not _is_int(offset) or offset < 0:
            raise Unsupported("tensor rebuilt from something other than a storage")
        if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
                and all(_is_int(s) and s >= 0 for s in size + stride)):
            raise Unsupported("tensor with a malformed size or stride")
        if requires_grad is not False or hooks or metadata:
            raise Unsupported("tensor with gradients, hooks or metadata")
        extent = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
        if extent > storage.flat.numel():
            raise Unsupported("tensor reaches past its storage")
        tensor = storage.flat.as_strided(size, stride, offset)
        self.made.append((tensor, _layout(tensor)))
        return tensor


def _layout(t: torch.Tensor) -> tuple:
    """Where a tensor's values live and how it reads them (a BUILD on it would change this)."""
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype,
            t.requires_grad, t._backward_hooks)  # noqa: SLF001


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, raw: bytes, zf: zipfile.ZipFile, data_dir: str) -> None:
        super().__init__(io.BytesIO(data))
        self.raw, self.zf, self.data_dir = memoryview(raw), zf, data_dir
        self.storages: dict[str, _Storage] = {}
        self.rebuild = _RebuildTensor()

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self.rebuild
        raise Unsupported(f"global {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and _is_int(pid[4])
                and pid[4] >= 0):
            raise Unsupported("persistent id other than a storage")
        _, kind, key, _location, numel = pid
        if key not in self.storages:
            self.storages[key] = _Storage(self._record(key, numel * kind.dtype.itemsize), kind.dtype, numel)
        return self.storages[key]

    def _record(self, key: str, nbytes: int) -> memoryview:
        """A storage's bytes, read only once its size is known to be right (no decompression).

        As ``ZipFile.read`` reads them (the local header's signature and name checked, the CRC-32 compared),
        but straight from the file's bytes: a checkpoint has one record per tensor, and ``ZipFile.open``
        costs more than the copy."""
        try:
            info = self.zf.getinfo(self.data_dir + key)
        except KeyError:
            raise Unsupported(f"no record for storage {key}") from None
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != nbytes or info.compress_size != nbytes:
            raise Unsupported(f"record of storage {key} is compressed or of the wrong size")
        if info.flag_bits & 0x1:
            raise Unsupported(f"record of storage {key} is encrypted")
        start = info.header_offset
        header = _LOCAL_HEADER.unpack_from(self.raw, start)  # struct.error past the end: a damaged file
        name_len, extra_len = header[10], header[11]
        name = bytes(self.raw[start + _LOCAL_HEADER.size : start + _LOCAL_HEADER.size + name_len])
        if header[0] != b"PK\x03\x04" or name != info.orig_filename.encode("utf-8"):
            raise Unsupported(f"the local header of storage {key} does not match the directory")
        first = start + _LOCAL_HEADER.size + name_len + extra_len
        data = self.raw[first : first + nbytes]
        if len(data) != nbytes or zlib.crc32(data) != info.CRC:
            raise zipfile.BadZipFile(f"bad CRC-32 or truncated record for storage {key}")
        return data

    def load(self):
        obj = super().load()
        if any(_layout(t) != layout for t, layout in self.rebuild.made):
            raise Unsupported("a tensor was changed after it was built")
        return obj


def load(raw: bytes) -> object:
    """The object a ``torch.save`` zip file holds, its tensors on the CPU.

    Raises :class:`Unsupported` for anything but the plain case; other exceptions mean a damaged
    file, which ``torch.load`` should then be the one to describe.
    """
    # pickle's extension codes resolve through a process-wide cache that find_class never sees
    if copyreg._inverted_registry:  # noqa: SLF001 - empty unless some library registered codes
        raise Unsupported("pickle extension codes are registered in this process")
    if sys.byteorder != "little" or raw[:4] != b"PK\x03\x04":  # a zip from its first byte, as torch requires
        raise Unsupported("not a little-endian zip checkpoint")
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        names = zf.namelist()
        if len(names) != len(set(names)) or zf.infolist()[0].header_offset != 0:
            raise Unsupported("repeated entry names, or data before the first entry")
        pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise Unsupported("not exactly one data.pkl")
        prefix = pkls[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in names and zf.read(f"{prefix}byteorder") != b"little":
            raise Unsupported("big-endian storages")
        return _Unpickler(zf.read(pkls[0]), raw, zf, f"{prefix}data/").load()
