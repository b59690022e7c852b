"""The Cell2Net 0.13 network, rebuilt so that upstream state dicts load with ``strict=True``.

The parameter names and the computation follow ``PeaksTF2GeneExpressionPoisson`` of
cell2net 0.13; every size is an argument of :class:`ModelSpec`, which the checkpoint
loader infers from the state-dict shapes. Inputs, per cell:

* ``peak_seq``  (B, P, L, 4) one-hot sequence of each peak,
* ``peak_acc``  (B, P)       accessibility counts,
* ``peak_dist`` (B, P)       ``exp(-distance / 500000)``,
* ``tf_exp``    (B, T)       TF counts,
* ``covariates``(B, C)       numeric covariates,

and the output is (B, 1), the log-rate of a Poisson.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

#: Upstream hard-codes these; they are not recoverable from shapes.
N_HEADS = 4
ATTN_DROPOUT = 0.1
HEAD_DROPOUT = 0.25
MERGE_HIDDEN = 126
HEAD_HIDDEN = 32


@dataclass(frozen=True)
class ModelSpec:
    """Every hyper-parameter of one Cell2Net module."""

    n_peaks: int
    peak_len: int
    n_tfs: int
    n_covariates: int
    n_filters: tuple[int, ...]
    n_channels: int
    kernel_size: int
    n_dims: int
    n_attn_blocks: int
    head_hidden: int = HEAD_HIDDEN
    merge_hidden: int = MERGE_HIDDEN

    @property
    def embd_len(self) -> int:
        """Length of the sequence embedding after the pooling tower."""
        return self.peak_len // (2 ** len(self.n_filters))

    @property
    def head_in(self) -> int:
        """Width of the head's input: attention output, distances, TFs, covariates."""
        return self.n_peaks * (self.n_dims + 1) + self.n_tfs + self.n_covariates

    def as_dict(self) -> dict:
        """Plain-type dictionary (for HDF5 attributes and ``inspect``)."""
        d = asdict(self)
        d["n_filters"] = list(self.n_filters)
        return d


class SeqEncoder(nn.Module):
    """Convolution tower shared by all peaks; pools the length by 2 per stage."""

    def __init__(self, n_channels: int, kernel_size: int, n_filters: tuple[int, ...]) -> None:
        super().__init__()
        self.stem_conv = nn.Sequential(
            nn.Conv2d(n_channels, n_filters[0], kernel_size=(1, kernel_size), padding="same"),
            nn.ELU(),
        )
        widths = list(n_filters) + [n_filters[-1]]
        stages: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            stages.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, kernel_size=(1, 3), padding=(0, 1)),
                    nn.BatchNorm2d(c_out),
                    nn.ELU(),
                    nn.MaxPool2d(kernel_size=(1, 2), stride=(1, 2)),
                )
            )
            stages.append(nn.Sequential(nn.Conv2d(c_out, c_out, kernel_size=(1, 1)), nn.ELU()))
        self.conv_tower = nn.ModuleList(stages)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The stem convolution, ``padding="same"``. For an even kernel torch pads asymmetrically (one more
        on the right) through a padded copy and warns about it; the same padding is done here explicitly,
        with the same result and no warning."""
        conv = self.stem_conv[0]
        k = conv.kernel_size[1]
        if k % 2:
            return conv(x)
        return F.conv2d(F.pad(x, ((k - 1) // 2, k // 2)), conv.weight, conv.bias)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, P, L, 4) one-hot -> (B, P, F * L') flattened embedding per peak."""
        x = self.stem_conv[1](self.stem(seq.permute(0, 3, 1, 2)))
        for i in range(0, len(self.conv_tower), 2):
            x = self.conv_tower[i](x)
            x = self.conv_tower[i + 1](x) + x
        return torch.flatten(x.permute(0, 2, 1, 3), start_dim=2)

    @torch.no_grad()
    def forward_inference(self, seq: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` in eval mode, without autograd, in under half the time.

        Each BatchNorm is folded into the convolution before it, every ELU works in place and, the ELU
        being increasing, after the max-pooling (half the elements; the same values). For one-hot
        sequences the stem and its ELU are looked up per window of bases (:meth:`stem_elu`). Equal to
        :meth:`forward` up to float rounding. The fast engines embed each gene's sequences with it.

        On a GPU it runs with cuDNN's TF32 off (torch allows TF32 for convolutions by default: 10 bits of
        mantissa), so that the embedding every cell of the gene uses is float32 on the GPU as on the CPU.
        """
        if self.training:
            raise RuntimeError("forward_inference folds BatchNorm statistics: eval mode only")
        with _no_tf32(seq.device):
            return self._forward_folded(seq)

    def _forward_folded(self, seq: torch.Tensor) -> torch.Tensor:
        x = self.stem_elu(seq)
        for i in range(0, len(self.conv_tower), 2):
            conv, bn, elu, pool = self.conv_tower[i]
            weight, bias = _fold_batchnorm(conv, bn)
            x = F.conv2d(x, weight, bias, padding=conv.padding)  # rebinding x frees the input early
            # max(elu(a), elu(b)) == elu(max(a, b)) for an increasing ELU (alpha >= 0)
            x = F.elu_(pool(x), elu.alpha) if elu.alpha >= 0 else pool(F.elu_(x, elu.alpha))
            conv_1x1, elu_1x1 = self.conv_tower[i + 1]
            x = F.elu_(conv_1x1(x), elu_1x1.alpha).add_(x)
        return torch.flatten(x.permute(0, 2, 1, 3), start_dim=2)

    @torch.no_grad()
    def stem_elu(self, seq: torch.Tensor) -> torch.Tensor:
        """ELU of the stem convolution, (B, P, L, C) -> (B, F, P, L), without autograd.

        The stem output at a position depends only on the window of ``K`` letters around it, each one of
        the ``C`` bases or none (N, or the padding). When ``seq`` is one-hot and the sequences hold more
        positions than there are such windows (``(C + 1) ** K``: 3,125 for upstream's 4 channels and
        kernel 5), the convolution and its ELU run once per window and every position looks its window
        up; otherwise they run over the sequences.
        """
        conv, alpha = self.stem_conv[0], self.stem_conv[1].alpha
        k, c = conv.kernel_size[1], conv.in_channels
        n_windows = (c + 1) ** k
        codes = _window_codes(seq, k) if n_windows <= min(seq[..., 0].numel(), MAX_STEM_WINDOWS) else None
        if codes is None:
            return F.elu_(self.stem(seq.permute(0, 3, 1, 2)), alpha)
        windows = _all_windows(c, k, seq.dtype, seq.device)
        table = F.elu_(F.conv2d(windows, conv.weight, conv.bias), alpha)[:, :, 0, 0]  # (windows, F)
        # (B, P, L, F) viewed as (B, F, P, L): the channels-last layout the stem's convolution gives too
        return F.embedding(codes, table).permute(0, 3, 1, 2)

@contextlib.contextmanager
def _no_tf32(device: torch.device):
    """cuDNN's TF32 off on a CUDA device while the block runs (restored after); nothing elsewhere."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


#: Most windows a stem table may have (their codes must be exact in float32).
MAX_STEM_WINDOWS = 1 << 20


def _window_codes(seq: torch.Tensor, k: int) -> torch.Tensor | None:
    """The stem's window around each position of one-hot ``seq`` (B, P, L, C) as one integer (B, P, L):
    the window's letters as base-(C + 1) digits, digit ``C`` meaning no base (an N, or the stem's zero
    padding: ``(k - 1) // 2`` on the left, ``k // 2`` on the right). ``None`` when ``seq`` is not one-hot
    (a value other than 0 and 1, or more than one 1 at a position)."""
    b, p, length, c = seq.shape
    letter = (seq @ torch.arange(1, c + 1, dtype=seq.dtype, device=seq.device)).round_().clamp_(0, c)
    digit = (letter.long() - 1).remainder_(c + 1)  # a base's index; no base (letter 0): c
    if not torch.equal(F.embedding(digit, _letters(c, seq.dtype, seq.device)), seq):
        return None  # not one-hot: the letters do not give the sequences back
    digits = F.pad(digit.to(torch.float32).view(b * p, 1, length), ((k - 1) // 2, k // 2), value=float(c))
    powers = ((c + 1) ** torch.arange(k, dtype=torch.float32, device=seq.device)).view(1, 1, k)
    return F.conv1d(digits, powers).view(b, p, length).long()  # integers below 2 ** 24: exact


@functools.lru_cache(maxsize=8)
def _letters(c: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Row ``i`` is base ``i`` one-hot; row ``c``, no base, is zero: (C + 1, C)."""
    return torch.eye(c + 1, c, dtype=dtype, device=device)


@functools.lru_cache(maxsize=8)
def _all_windows(c: int, k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every window of :func:`_window_codes`, in code order, as a batch of (W, C, 1, K) inputs: window ``w``'s
    letter ``j`` is digit ``j`` of ``w`` (digit ``c``: all zero). Channels-last, as the stem sees the
    sequences (B, P, L, C) permuted, so that the convolution takes the same path: for upstream's sizes its
    values are then the same bits as over the sequences (for other sizes they may differ in the last bit)."""
    powers = (c + 1) ** torch.arange(k, device=device)
    digits = (torch.arange((c + 1) ** k, device=device).unsqueeze(1) // powers) % (c + 1)  # (W, K)
    windows = F.embedding(digits, _letters(c, dtype, device)).permute(0, 2, 1).unsqueeze(2)
    return windows.contiguous(memory_format=torch.channels_last)


def _fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one convolution (``bn`` in eval mode)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    shift = bn.bias if bn.bias is not None else 0.0
    return conv.weight * scale.view(-1, 1, 1, 1), (bias - bn.running_mean) * scale + shift


class AttentionBlock(nn.Module):
    """Pre-norm self-attention block over peaks (upstream's MLP has no activation between its layers)."""

    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = nn.MultiheadAttention(n_embd, N_HEADS, batch_first=True)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlpf = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd),
            nn.Linear(4 * n_embd, n_embd),
            nn.ReLU(),
            nn.Dropout(ATTN_DROPOUT),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlpf(self.ln_2(x))


class Cell2NetModule(nn.Module):
    """Cell2Net 0.13's ``PeaksTF2GeneExpressionPoisson`` with every size explicit."""

    def __init__(self, spec: ModelSpec, dropout_rate: float = HEAD_DROPOUT) -> None:
        super().__init__()
        self.spec = spec
        self.seq_encoder = SeqEncoder(spec.n_channels, spec.kernel_size, spec.n_filters)
        self.attn_blocks = nn.ModuleList(AttentionBlock(spec.n_dims) for _ in range(spec.n_attn_blocks))
        self.merge_seq_atac = nn.Sequential(
            nn.Conv1d(spec.embd_len * spec.n_filters[-1] + 1, spec.merge_hidden, kernel_size=1),
            nn.ReLU(),
            nn.Conv1d(spec.merge_hidden, spec.n_dims, kernel_size=1),
            nn.ReLU(),
        )
        self.fc = nn.Sequential(
            nn.Linear(spec.head_in, spec.head_hidden),
            nn.ReLU(),
            nn.BatchNorm1d(spec.head_hidden),
            nn.Dropout(dropout_rate),
            nn.Linear(spec.head_hidden, 1),
        )

    def encode_sequences(self, peak_seq: torch.Tensor) -> torch.Tensor:
        """Sequence embedding, (B, P, L, 4) -> (B, P, F * L')."""
        return self.seq_encoder(peak_seq)

    def encode_peaks(self, seq_embd: torch.Tensor, peak_acc: torch.Tensor) -> torch.Tensor:
        """Merge sequence embedding with accessibility and run attention -> (B, P * D)."""
        merged = torch.cat([seq_embd, peak_acc.unsqueeze(-1)], dim=-1)
        x = self.merge_seq_atac(merged.permute(0, 2, 1)).permute(0, 2, 1)
        for block in self.attn_blocks:
            x = block(x)
        return torch.flatten(x, start_dim=1)

    def head_input(
        self,
        peaks: torch.Tensor,
        peak_dist: torch.Tensor,
        tf_exp: torch.Tensor,
        covariates: torch.Tensor,
    ) -> torch.Tensor:
        """Concatenate the head's input in upstream's order."""
        return torch.cat([peaks, peak_dist, tf_exp, covariates], dim=1)

    def forward(
        self,
        peak_seq: torch.Tensor,
        peak_acc: torch.Tensor,
        peak_dist: torch.Tensor,
        tf_exp: torch.Tensor,
        covariates: torch.Tensor,
    ) -> torch.Tensor:
        peaks = self.encode_peaks(self.encode_sequences(peak_seq), peak_acc)
        return self.fc(self.head_input(peaks, peak_dist, tf_exp, covariates))

    def tf_slice(self) -> slice:
        """Columns of the head's first Linear that multiply the TF expression."""
        start = self.spec.n_peaks * (self.spec.n_dims + 1)
        return slice(start, start + self.spec.n_tfs)


@dataclass(frozen=True)
class Template:
    """A meta-device module of one encoder/attention shape (one peak, no TFs or covariates: only the head's
    first Linear depends on those counts), its state's shapes and floating-ness by name, and where each
    tensor goes: ``(module, leaf, key, is_parameter)``, the module by its place in :func:`_copy_tree`'s order."""

    module: Cell2NetModule
    shapes: dict[str, tuple[tuple[int, ...], bool]]
    slots: tuple[tuple[int, str, str, bool], ...]


#: One template per encoder/attention shape: what every gene of a job shares.
_TEMPLATES: dict[ModelSpec, Template] = {}


def template(spec: ModelSpec) -> Template:
    """The cached :class:`Template` of ``spec``'s sizes. Allocates nothing, whatever the sizes."""
    key = replace(spec, n_peaks=1, n_tfs=0, n_covariates=0)
    if key not in _TEMPLATES:
        with torch.device("meta"):
            module = Cell2NetModule(key)
        shapes = {k: (tuple(v.shape), v.is_floating_point()) for k, v in module.state_dict().items()}
        slots = []
        for i, (prefix, sub) in enumerate(_tree(module)):
            for table, is_param in ((sub._parameters, True), (sub._buffers, False)):
                slots += [(i, leaf, f"{prefix}{leaf}", is_param) for leaf, v in table.items() if v is not None]
        if {k for _, _, k, _ in slots} != set(shapes):
            raise AssertionError("the template's slots differ from its state dict")  # the tree walk is wrong
        _TEMPLATES[key] = Template(module, shapes, tuple(slots))
    return _TEMPLATES[key]


def from_state(spec: ModelSpec, state: dict[str, torch.Tensor]) -> Cell2NetModule:
    """A module of ``spec`` holding ``state``'s tensors (no initialisation, no copy), in eval mode.

    Building an ``nn.Module`` tree is ~60 submodules of Python per gene; instead the tree of a
    cached template with the same encoder and attention sizes is copied (only the head's first
    Linear depends on the peak, TF and covariate counts) and the tensors are put in place.
    ``state`` must have exactly the module's keys and shapes (the checkpoint loader checks them).
    """
    tpl = template(spec)
    if state.keys() != tpl.shapes.keys():
        raise KeyError(f"state keys differ from the module's: {sorted(set(tpl.shapes) ^ set(state))[:5]}")
    copies: list[nn.Module] = []
    module = _copy_tree(tpl.module, copies)
    module.spec = spec
    module.fc[0].in_features = spec.head_in
    for i, leaf, key, is_param in tpl.slots:
        if is_param:
            copies[i]._parameters[leaf] = nn.Parameter(state[key])
        else:
            copies[i]._buffers[leaf] = state[key]
    return module.eval()


def _tree(module: nn.Module, prefix: str = ""):
    """``(prefix, submodule)`` of ``module`` and every submodule, in :func:`_copy_tree`'s order (depth first)."""
    yield prefix, module
    for name, sub in module._modules.items():
        yield from _tree(sub, f"{prefix}{name}.")


def _copy_tree(module: nn.Module, copies: list[nn.Module]) -> nn.Module:
    """A copy of ``module``'s tree: new module objects with their own registries, sharing no containers; each
    copy is appended to ``copies`` in :func:`_tree`'s order."""
    new = object.__new__(type(module))
    copies.append(new)
    attrs = {k: (v.copy() if isinstance(v, (dict, set)) else v) for k, v in module.__dict__.items()}
    attrs["_modules"] = {name: _copy_tree(sub, copies) for name, sub in module._modules.items()}
    new.__dict__.update(attrs)
    return new
