"""The fast checkpoint reader (model/torch_zip.py) against torch.load: equal objects on real and random
files, and refusal (torch.load decides) of everything outside the plain case."""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cell2net_attr.errors import UserError
from cell2net_attr.model import torch_zip
from cell2net_attr.model.checkpoint import load_checkpoint

PROPS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def same(a, b) -> bool:
    """Equal values, types, dtypes, shapes, strides and OrderedDict metadata, recursively."""
    if isinstance(a, torch.Tensor):
        return (type(b) is torch.Tensor and a.dtype == b.dtype and a.shape == b.shape
                and a.stride() == b.stride() and torch.equal(a, b))
    if isinstance(a, dict):
        return (type(a) is type(b) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
                and getattr(a, "_metadata", None) == getattr(b, "_metadata", None))
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize("gene", ["GENE0", "TF0"])
def test_upstream_checkpoints_read_as_torch_reads_them(upstream, gene):
    path = upstream / "models" / f"{gene}.pt"
    assert same(torch_zip.load(path.read_bytes()), torch.load(path, map_location="cpu", weights_only=True))


def test_a_checkpoint_with_results_for_every_cell(tmp_path):
    """Upstream stores one result per training cell: the bulk of a real checkpoint's pickle."""
    n = 5000
    obj = {"model_state_dict": collections.OrderedDict(w=torch.randn(3, 4), b=torch.arange(5)),
           "results": {"true": {i: float(i) for i in range(n)}, "pred": {i: i / 3 for i in range(n)},
                       "data": {i: ("train", "valid", "test")[i % 3] for i in range(n)}},
           "history": {"epochs": {0: 0}}, "module_summary": {"n_peaks": 4, "n_filters": [64, 32]}}
    raw = saved(obj)
    assert same(torch_zip.load(raw), torch.load(io.BytesIO(raw), weights_only=True))


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool]


@st.composite
def state_dicts(draw):
    """Tensors of every storage dtype, some empty, some views sharing one storage, some transposed."""
    out = collections.OrderedDict()
    for i in range(draw(st.integers(0, 6))):
        dtype = draw(st.sampled_from(DTYPES))
        shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=3)))
        t = (torch.rand(shape) * 100).to(dtype)
        kind = draw(st.sampled_from(["plain", "transposed", "view"]))
        if kind == "transposed" and t.dim() >= 2:
            t = t.transpose(0, 1)
        if kind == "view" and out:
            base = next(reversed(out.values()))
            t = base.flatten()[: draw(st.integers(0, base.numel()))] if base.is_contiguous() else t
        out[f"t{i}"] = t
    out._metadata = {"": {"version": draw(st.integers(1, 3))}}
    return out


@PROPS
@given(state_dicts())
def test_random_state_dicts_read_as_torch_reads_them(state):
    raw = saved({"model_state_dict": state, "module_summary": {"n": 1}})
    assert same(torch_zip.load(raw), torch.load(io.BytesIO(raw), weights_only=True))


class _FakeStorage:
    pass


class _Tensorish:
    """Pickles as torch's tensor rebuild with chosen arguments (what a hostile file can write)."""

    def __init__(self, *args) -> None:
        self.args = args

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


def crafted(obj, numel: int = 4, nbytes: int = 16) -> bytes:
    """A zip checkpoint whose pickle is ``obj`` and whose one storage '0' is ``numel`` floats in ``nbytes``."""

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(o, _FakeStorage) else None

    data = io.BytesIO()
    Pickler(data, protocol=2).dump(obj)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", data.getvalue())
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/data/0", bytes(nbytes))
    return buf.getvalue()


def test_the_crafting_is_sound():
    """The control: the same crafting with honest arguments reads back, so the refusals below mean something."""
    t = torch_zip.load(crafted({"w": _Tensorish(_FakeStorage(), 0, (2, 2), (2, 1), False, collections.OrderedDict())}))
    assert torch.equal(t["w"], torch.zeros(2, 2))


@pytest.mark.parametrize("args, numel, nbytes", [
    ((_FakeStorage(), 0, (10,), (1,), False, collections.OrderedDict()), 4, 16),  # past the storage's end
    ((_FakeStorage(), 3, (2,), (1,), False, collections.OrderedDict()), 4, 16),  # offset + size past it
    ((_FakeStorage(), -1, (2,), (1,), False, collections.OrderedDict()), 4, 16),  # negative offset
    ((_FakeStorage(), 0, (2,), (-1,), False, collections.OrderedDict()), 4, 16),  # negative stride
    ((_FakeStorage(), 0, (2, 2), (1,), False, collections.OrderedDict()), 4, 16),  # size and stride disagree
    ((_FakeStorage(), 0, (2,), (1,), False, collections.OrderedDict()), 4, 15),  # record shorter than numel
    (("not a storage", 0, (2,), (1,), False, collections.OrderedDict()), 4, 16),
    ((_FakeStorage(), 0, (2,), (1,), False, collections.OrderedDict(), {"neg": True}), 4, 16),  # metadata
])
def test_malformed_tensors_are_left_to_torch(args, numel, nbytes):
    with pytest.raises(torch_zip.Unsupported):
        torch_zip.load(crafted({"w": _Tensorish(*args)}, numel, nbytes))


def test_any_other_global_is_left_to_torch(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    raw = saved({"model_state_dict": {}, "results": Evil()})
    with pytest.raises(torch_zip.Unsupported, match="posix.system|os.system"):
        torch_zip.load(raw)
    assert not marker.exists()


def test_refused_files_fall_back_to_torch_and_say_why(tmp_path):
    """A tensor past its storage, through load_checkpoint: torch.load is asked, and its refusal is one line."""
    path = tmp_path / "G.pt"
    path.write_bytes(crafted({"model_state_dict": {"w": _Tensorish(_FakeStorage(), 0, (10,), (1,), False,
                                                                    collections.OrderedDict())},
                              "module_summary": {}}))
    with pytest.raises(UserError) as err:
        load_checkpoint(path)
    assert "G.pt" in str(err.value) and "\n" not in str(err.value)


def test_not_a_zip_is_left_to_torch():
    with pytest.raises(torch_zip.Unsupported):
        torch_zip.load(b"\x80\x02}q\x00.")


def test_checkpoint_sha256_is_of_the_file(upstream):
    import hashlib

    path = upstream / "models" / "GENE0.pt"
    assert load_checkpoint(path).sha256 == hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_registered_extension_codes_are_left_to_torch(monkeypatch):
    """pickle's EXT opcodes resolve through a cache find_class never sees: with any code registered, refuse."""
    import copyreg

    monkeypatch.setitem(copyreg._inverted_registry, 240, ("os", "system"))
    with pytest.raises(torch_zip.Unsupported, match="extension"):
        torch_zip.load(saved({"model_state_dict": {}}))


def _zip(pkl: bytes, records: dict[str, bytes] | None = None, compress: bool = False, junk: bytes = b"",
         twice: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        for key, data in (records or {"0": bytes(16)}).items():
            zf.writestr(f"archive/data/{key}", data, compress_type=zipfile.ZIP_DEFLATED if compress else None)
            if twice:
                with pytest.warns(UserWarning, match="Duplicate"):
                    zf.writestr(f"archive/data/{key}", b"\x01" * len(data))
    return junk + buf.getvalue()


def _text(s: str) -> bytes:
    return b"X" + len(s).to_bytes(4, "little") + s.encode()


_STORAGE = b"(" + _text("storage") + b"ctorch\nFloatStorage\n" + _text("0") + _text("cpu") + b"K\x04tQ"


@pytest.mark.parametrize("pkl", [
    b"ctorch._utils\n_rebuild_tensor_v2\n}b.",  # BUILD on the rebuild itself (it would stay changed)
    _STORAGE + b"}" + _text("flat") + b"K\x01sb.",  # BUILD on a storage (would swap its bytes)
])
def test_build_on_the_readers_own_objects_is_refused(pkl):
    with pytest.raises(torch_zip.Unsupported, match="BUILD"):
        torch_zip.load(_zip(pkl))


class _TensorChangedAfter(_Tensorish):
    """A tensor rebuild followed by BUILD: torch's Tensor.__setstate__ then sets requires_grad and hooks."""

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args, (True, None, collections.OrderedDict())


def test_a_tensor_changed_after_it_was_built_is_refused():
    obj = {"w": _TensorChangedAfter(_FakeStorage(), 0, (2,), (1,), False, collections.OrderedDict())}
    with pytest.raises((torch_zip.Unsupported, RuntimeError)):
        torch_zip.load(crafted(obj))


def test_an_empty_storage_cannot_be_grown():
    """A zero-element storage is a slice of a fixed buffer: set_ cannot reach memory past it."""
    t = torch_zip.load(crafted({"w": _Tensorish(_FakeStorage(), 0, (0,), (1,), False, collections.OrderedDict())},
                               numel=0, nbytes=0))["w"]
    assert t.numel() == 0
    with pytest.raises(RuntimeError):
        t.set_(t.untyped_storage(), 0, (1000,), (1,))


@pytest.mark.parametrize("variant", ["twice", "junk", "compressed", "requires_grad"])
def test_zips_torch_would_read_otherwise_are_left_to_it(variant):
    ok = pickle.dumps(None)
    tensor = {"w": _Tensorish(_FakeStorage(), 0, (2,), (1,), variant == "requires_grad", collections.OrderedDict())}
    raw = {"twice": lambda: _zip(ok, twice=True), "junk": lambda: _zip(ok, junk=b"\0" * 64),
           "compressed": lambda: _zip(_pickled(tensor), compress=True),
           "requires_grad": lambda: crafted(tensor)}[variant]()
    with pytest.raises(torch_zip.Unsupported):
        torch_zip.load(raw)


def _pickled(obj) -> bytes:
    """``obj`` pickled as crafted() pickles it (its storage is record '0', 4 floats)."""
    raw = crafted(obj)
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        return zf.read("archive/data.pkl")
