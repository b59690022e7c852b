"""Loading Cell2Net checkpoints: safe unpickling, shape inference, validation.

A checkpoint written by ``Cell2Net.save`` is a dict with ``model_state_dict``,
``module_summary``, ``history`` and ``results``. Only tensors and plain containers are
accepted (:mod:`.torch_zip`, or ``torch.load(weights_only=True)`` for any file it does not handle), so
loading an untrusted file never runs code.
Every architecture size is read from the state-dict shapes; ``module_summary`` only
supplies the peak length and is cross-checked.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from ..errors import UserError, first_line
from . import torch_zip
from .architecture import Cell2NetModule, ModelSpec, from_state, template

REQUIRED_KEYS = ("model_state_dict", "module_summary")


@dataclass(frozen=True)
class Checkpoint:
    """A validated checkpoint: where it came from, its gene, sizes and weights."""

    path: Path
    gene: str
    spec: ModelSpec
    state_dict: dict[str, torch.Tensor]
    summary: dict
    sha256: str

    def build_module(self) -> Cell2NetModule:
        """A fresh module in eval mode with the checkpoint's weights (copies: the module never shares them)."""
        state = {k: v.clone() for k, v in self.state_dict.items()}
        try:
            return from_state(self.spec, state)
        except KeyError as exc:  # shapes and keys were checked; this is a last line of defence
            raise UserError(f"state dict does not fit the inferred architecture ({first_line(exc)})",
                            self.path) from exc


def load_checkpoint(path: str | Path, gene: str | None = None) -> Checkpoint:
    """Read and validate a Cell2Net checkpoint.

    Parameters
    ----------
    path
        The ``GENE.pt`` file.
    gene
        Gene name; defaults to the file stem, as ``Cell2Net.save`` names files.

    Returns
    -------
    Checkpoint
        The validated checkpoint. Raises :class:`UserError` on any problem.
    """
    path = Path(path)
    raw, sha256 = _read_torch_file(path)
    if not isinstance(raw, dict) or not all(k in raw for k in REQUIRED_KEYS):
        if isinstance(raw, dict):
            keys = sorted(map(str, raw.keys()))
            have = f"{keys[:5]}" + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            if "fc.0.weight" in raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
                have += " (a bare state dict; Cell2Net.save also stores 'module_summary')"
        else:
            have = type(raw).__name__
        raise UserError(f"not a Cell2Net checkpoint: expected keys {list(REQUIRED_KEYS)}, found {have}", path)
    state, summary = raw["model_state_dict"], raw["module_summary"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError("'model_state_dict' is not a mapping of tensors", path)
    if not isinstance(summary, dict):
        raise UserError("'module_summary' is not a dictionary", path)
    spec = infer_spec(state, summary, path)
    return Checkpoint(path, gene or path.stem, spec, dict(state), dict(summary), sha256)


def _read_torch_file(path: Path) -> tuple[object, str]:
    """The unpickled checkpoint and the sha256 of its bytes (the file is read once)."""
    if not path.exists():
        raise UserError("checkpoint file not found", path)
    if path.is_dir():
        raise UserError("checkpoint path is a directory, expected a .pt file", path)
    if is_hdf5(path):  # the arguments the wrong way round, most likely (checked before reading it all)
        raise UserError("this is an HDF5 file (data?), not a PyTorch checkpoint: give the checkpoint (GENE.pt) "
                        "first, then the data (.h5mu)", path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read the checkpoint ({first_line(exc)})", path) from exc
    sha256 = hashlib.sha256(raw).hexdigest()
    try:
        return torch_zip.load(raw), sha256
    except Exception:  # noqa: BLE001 - anything unusual: torch's own safe loader decides, and explains
        return _torch_load(raw, path), sha256


def _torch_load(raw: bytes, path: Path) -> object:
    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()
        text = str(exc)
        if "Unsupported operand" in text and "GLOBAL" not in text:
            # an opcode the safe unpickler does not know: garbage, or a pickle that is not a torch file
            first = next(ln for ln in reason if "Unsupported operand" in ln).strip()[:200]
            raise UserError(f"not a readable PyTorch checkpoint ({first})", path) from exc
        # weights_only refused a global: the file wants to run code or build arbitrary objects.
        detail = next((ln for ln in reason if any(w in ln for w in ("GLOBAL", "Unsupported", "Trying", "Can only"))),
                      reason[0] if reason else "")
        raise UserError(f"refused to load: the file needs code execution to unpickle ({detail.strip()[:160]})", path) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, UnicodeDecodeError, AttributeError,
            IndexError, KeyError, TypeError, MemoryError) as exc:
        raise UserError(f"not a readable PyTorch checkpoint ({first_line(exc)})", path) from exc


def is_hdf5(path: Path) -> bool:
    """HDF5's signature at 0, 512, 1024, ... (an .h5mu has a 512-byte user block before it)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False  # reading it again says why
    return any(head[o : o + 8] == b"\x89HDF\r\n\x1a\n" for o in (0, 512, 1024, 2048))


def _shape(state: dict[str, torch.Tensor], key: str, path: Path) -> tuple[int, ...]:
    if key not in state:
        raise UserError(f"state dict has no '{key}': not a Cell2Net 0.13 model", path)
    return tuple(state[key].shape)


def infer_spec(state: dict[str, torch.Tensor], summary: dict, path: Path) -> ModelSpec:
    """Infer every hyper-parameter from the state-dict shapes and check them against each other."""
    stem = _shape(state, "seq_encoder.stem_conv.0.weight", path)
    if len(stem) != 4 or stem[2] != 1:
        raise UserError(f"'seq_encoder.stem_conv.0.weight' has shape {list(stem)}, expected [F, C, 1, K]", path)
    n_first, n_channels, _, kernel_size = stem

    stage_keys = sorted(
        {int(m.group(1)) for k in state if (m := re.match(r"seq_encoder\.conv_tower\.(\d+)\.", k))}
    )
    if not stage_keys or stage_keys != list(range(len(stage_keys))) or len(stage_keys) % 2:
        raise UserError(f"seq_encoder.conv_tower has stages {stage_keys}, expected 0..2n-1", path)
    n_filters = [n_first]
    for i in range(0, len(stage_keys), 2):
        w = _shape(state, f"seq_encoder.conv_tower.{i}.0.weight", path)
        if len(w) != 4 or w[1] != n_filters[-1] or w[2:] != (1, 3):
            raise UserError(f"'seq_encoder.conv_tower.{i}.0.weight' has shape {list(w)}, "
                            f"expected [*, {n_filters[-1]}, 1, 3]", path)
        n_filters.append(w[0])
    # the tower maps n_filters[i] -> n_filters[i+1] and the last stage keeps the width
    if n_filters[-1] != n_filters[-2]:
        raise UserError(f"the last conv_tower stage changes width {n_filters[-2]} -> {n_filters[-1]}", path)
    n_filters = n_filters[:-1]

    n_dims = _shape(state, "attn_blocks.0.ln_1.weight", path)[0] if "attn_blocks.0.ln_1.weight" in state else None
    if n_dims is None:
        raise UserError("state dict has no attention block ('attn_blocks.0.*')", path)
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"attn_blocks\.(\d+)\.", k))})
    if blocks != list(range(len(blocks))):
        raise UserError(f"attention blocks are numbered {blocks}, expected 0..n-1", path)

    fc_in = _shape(state, "fc.0.weight", path)
    merge_in = _shape(state, "merge_seq_atac.0.weight", path)
    spec = _spec_from_summary(summary, path, n_filters=tuple(n_filters), n_channels=n_channels,
                              kernel_size=kernel_size, n_dims=n_dims, n_attn_blocks=len(blocks),
                              head_hidden=fc_in[0], merge_hidden=merge_in[0])
    _check_shapes(state, spec, path)
    return spec


def _spec_from_summary(summary: dict, path: Path, **inferred) -> ModelSpec:
    """Counts of peaks, TFs and covariates come from the summary; shapes then confirm them."""
    counts = {}
    for key in ("n_peaks", "peak_len", "n_tfs", "n_covariates"):
        value = summary.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise UserError(f"module_summary['{key}'] is {value!r}, expected a non-negative integer", path)
        counts[key] = value
    for key in ("n_dims", "n_channels"):
        if key in summary and summary[key] != inferred[key]:
            raise UserError(f"module_summary['{key}'] is {summary[key]!r} but the weights imply {inferred[key]}", path)
    if "n_filters" in summary and list(summary["n_filters"]) != list(inferred["n_filters"]):
        raise UserError(f"module_summary['n_filters'] is {list(summary['n_filters'])} "
                        f"but the weights imply {list(inferred['n_filters'])}", path)
    if counts["n_peaks"] < 1 or counts["peak_len"] < 1:
        raise UserError("module_summary declares no peaks or zero peak length", path)
    if inferred["n_dims"] % 4:
        raise UserError(f"embedding size {inferred['n_dims']} is not divisible by the 4 attention heads", path)
    return ModelSpec(**counts, **inferred)


def reference_shapes(spec: ModelSpec) -> dict[str, _Shape]:
    """Shape and floating-ness of every tensor of the module ``spec`` describes.

    Only the head's first Linear depends on the peak, TF and covariate counts, so the rest comes from the
    architecture's cached meta-device template (every gene of an atlas shares it), where a spec with absurd
    sizes (a corrupt summary) allocates nothing.
    """
    shapes = {k: _Shape(*v) for k, v in template(spec).shapes.items()}
    shapes["fc.0.weight"] = _Shape((spec.head_hidden, spec.head_in), True)
    return shapes


class _Shape(NamedTuple):
    shape: tuple[int, ...]
    floating: bool


def _check_shapes(state: dict[str, torch.Tensor], spec: ModelSpec, path: Path) -> None:
    """Every tensor of the module must have the shape the spec implies."""
    reference = reference_shapes(spec)
    missing = [k for k in reference if k not in state]
    extra = [k for k in state if k not in reference]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if extra:
            parts.append(f"unexpected {extra[:3]}")
        raise UserError("state dict keys differ from a Cell2Net 0.13 module: " + ", ".join(parts), path)
    for key, tensor in reference.items():
        if tuple(state[key].shape) != tensor.shape:
            hint = ""
            if key == "fc.0.weight":
                hint = (f" (n_peaks={spec.n_peaks}, n_dims={spec.n_dims}, n_tfs={spec.n_tfs}, "
                        f"n_covariates={spec.n_covariates} from module_summary)")
            elif key == "merge_seq_atac.0.weight":
                hint = f" (peak_len={spec.peak_len} from module_summary)"
            raise UserError(f"'{key}' has shape {list(state[key].shape)}, expected {list(tensor.shape)}{hint}", path)
        if tensor.floating and not state[key].is_floating_point():
            raise UserError(f"'{key}' has dtype {state[key].dtype}, expected floating point", path)
