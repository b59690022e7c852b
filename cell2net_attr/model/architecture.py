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
        """:meth:`forward` in eval mode, without autograd, in about half the time.

        Each BatchNorm is folded into the convolution before it and every ELU works in place; equal
        to :meth:`forward` up to float rounding. The fast engines embed each gene's sequences with it.
        """
        if self.training:
            raise RuntimeError("forward_inference folds BatchNorm statistics: eval mode only")
        x = F.elu_(self.stem(seq.permute(0, 3, 1, 2)), self.stem_conv[1].alpha)
        for i in range(0, len(self.conv_tower), 2):
            conv, bn, elu, pool = self.conv_tower[i]
            weight, bias = _fold_batchnorm(conv, bn)
            x = F.conv2d(x, weight, bias, padding=conv.padding)  # rebinding x frees the input early
            x = pool(F.elu_(x, elu.alpha))
            conv_1x1, elu_1x1 = self.conv_tower[i + 1]
            x = F.elu_(conv_1x1(x), elu_1x1.alpha).add_(x)
        return torch.flatten(x.permute(0, 2, 1, 3), start_dim=2)


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
    first Linear depends on those counts), and its state's shapes and floating-ness by name."""

    module: Cell2NetModule
    shapes: dict[str, tuple[tuple[int, ...], bool]]


#: One template per encoder/attention shape: what every gene of a job shares.
_TEMPLATES: dict[ModelSpec, Template] = {}


def template(spec: ModelSpec) -> Template:
    """The cached :class:`Template` of ``spec``'s sizes. Allocates nothing, whatever the sizes."""
    key = replace(spec, n_peaks=1, n_tfs=0, n_covariates=0)
    if key not in _TEMPLATES:
        with torch.device("meta"):
            module = Cell2NetModule(key)
        shapes = {k: (tuple(v.shape), v.is_floating_point()) for k, v in module.state_dict().items()}
        _TEMPLATES[key] = Template(module, shapes)
    return _TEMPLATES[key]


def from_state(spec: ModelSpec, state: dict[str, torch.Tensor]) -> Cell2NetModule:
    """A module of ``spec`` holding ``state``'s tensors (no initialisation, no copy), in eval mode.

    Building an ``nn.Module`` tree is ~60 submodules of Python per gene; instead the tree of a
    cached template with the same encoder and attention sizes is copied (only the head's first
    Linear depends on the peak, TF and covariate counts) and the tensors are put in place.
    ``state`` must have exactly the module's keys and shapes (the checkpoint loader checks them).
    """
    module = _copy_tree(template(spec).module)
    module.spec = spec
    module.fc[0].in_features = spec.head_in
    slots = {f"{prefix}{'.' if prefix else ''}{name}": (sub, name) for prefix, sub in module.named_modules()
             for name, value in (*sub._parameters.items(), *sub._buffers.items()) if value is not None}
    if set(slots) != set(state):
        raise KeyError(f"state keys differ from the module's: {sorted(set(slots) ^ set(state))[:5]}")
    for name, tensor in state.items():
        sub, leaf = slots[name]
        if leaf in sub._parameters:
            sub._parameters[leaf] = nn.Parameter(tensor)
        else:
            sub._buffers[leaf] = tensor
    return module.eval()


def _copy_tree(module: nn.Module) -> nn.Module:
    """A copy of ``module``'s tree: new module objects with their own registries, sharing no containers."""
    new = object.__new__(type(module))
    attrs = {k: (v.copy() if isinstance(v, (dict, set)) else v) for k, v in module.__dict__.items()}
    attrs["_modules"] = {name: _copy_tree(sub) for name, sub in module._modules.items()}
    new.__dict__.update(attrs)
    return new
