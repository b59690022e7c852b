"""The fast engine for peak accessibility (upstream's ``peak_attr``): IG where only accessibility moves.

Along the path ``alpha * acc`` the sequences, distances, TF expression and covariates are fixed, so the
sequence encoder runs once per gene and the head's TF, covariate, distance and bias terms once per cell.
At each of the ``n_steps`` quadrature points the merge (the peak encoder's exact tables), the attention
blocks and the head are evaluated forward and differentiated backward by hand (:mod:`.block_grad`), for
all the quadrature nodes of a cell at once. The quadrature nodes and weights are captum's own.

A closed peak (accessibility 0) does not move along the path. With ``multiply_by_inputs`` its attribution
is exactly 0, so only the open peaks' gradient is needed, and the first block costs ``O(P k)`` per point
for ``k`` open peaks (:mod:`.open_block`). Within a cell the open peaks come first. Without
``multiply_by_inputs`` every peak needs its gradient, so every peak is a moving slot (dense blocks).

A cell's numbers must not depend on the cells computed with it, and BLAS rounds a product differently
with its shape and with the alignment of its operands. So on a CPU each cell is computed alone, in
chunks of nodes whose size depends on its open count only: the same products whatever the batch. On a
GPU, where one cell is too little work, the cells of one open count are computed together; there a
cell's numbers may differ in the last bits with the cells around it.
"""

from __future__ import annotations

import functools

import torch

from .block_grad import BlockGrad, relu_backward
from .fast import GeneHead
from .open_block import OpenBlockGrad, Static

#: Floats that the tensors of one chunk may hold: about a last-level cache on a CPU, much more on a GPU.
CHUNK_FLOATS = {"cpu": 6_000_000, "cuda": 200_000_000}
#: Weight of a dense block's attention matrices in that count: they are written and read again several
#: times per point (measured best on a 2-core CPU: about 20 points per chunk for 100 peaks).
DENSE_WEIGHT = 6


class FastPeakEngine(GeneHead):
    """Structured IG over peak accessibility for a :class:`Cell2NetModule` in eval mode."""

    def __init__(self, module: torch.nn.Module, peak_seq: torch.Tensor, peak_dist: torch.Tensor, params) -> None:
        super().__init__(module, peak_seq, peak_dist, params)
        enc = self.encoder
        self.blocks = [BlockGrad(b) for b in enc.blocks]
        p, d = enc.n_peaks, enc.n_dims
        self.w_head = self.w_peaks_t.T.reshape(-1, p, d).contiguous()  # (hidden, P, D)
        with torch.no_grad():
            self.x0 = enc.merge(torch.zeros(1, p, dtype=self.w_head.dtype, device=self.w_head.device))[0]
        self.first = OpenBlockGrad(enc.blocks[0], self.x0) if enc.blocks and enc.blocks[0].use_exp2 else None
        self.chunk_floats = CHUNK_FLOATS.get(self.w_head.device.type, CHUNK_FLOATS["cuda"])
        self.one_cell = self.w_head.device.type == "cpu"

    @functools.cached_property
    def w_rest_t(self) -> torch.Tensor:
        """The head's TF and covariate columns, (T + C, H): fixed along this path."""
        return torch.cat([self.w_tf.T, self.w_cov_t])

    def _output(self, acc: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """The prediction (N,) for accessibility ``acc`` and the fixed part of the head's pre-activation."""
        z = torch.addmm(fixed, self.encoder(acc), self.w_peaks_t)
        return self.rest(z)[:, 0]

    @torch.no_grad()
    def attribute(self, peak_acc: torch.Tensor, tf_exp: torch.Tensor, covariates: torch.Tensor):
        """Attributions (B, P) for one batch, and the convergence delta when asked."""
        rest = torch.cat([tf_exp, covariates], dim=1)
        integrated = self.integrated_gradients(peak_acc, rest)
        attr = integrated * peak_acc if self.params.multiply_by_inputs else integrated
        delta = None
        if self.params.return_delta:
            fixed = torch.addmm(self.const, rest, self.w_rest_t)
            delta = attr.sum(dim=1) - (self._output(peak_acc, fixed) - self._output(torch.zeros_like(peak_acc), fixed))
        return attr, delta

    def integrated_gradients(self, peak_acc: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        """Captum's quadrature of ``d output / d acc`` along the path, (B, P); 0 where it is not needed.

        ``rest`` (B, T + C) is the TF expression and covariates, fixed along the path.
        """
        moving = peak_acc != 0 if self.params.multiply_by_inputs else torch.ones_like(peak_acc, dtype=torch.bool)
        counts = moving.sum(dim=1)
        order = torch.argsort((~moving).to(torch.uint8), dim=1, stable=True)  # moving peaks first, in order
        out = torch.zeros_like(peak_acc)
        for k in torch.unique(counts).tolist():  # one host sync per batch
            if k == 0:
                continue
            cells = torch.nonzero(counts == k)[:, 0]
            grads = self._group(peak_acc[cells], rest[cells], order[cells], k)  # (n, k)
            out[cells.unsqueeze(1), order[cells, :k]] = grads
        return out

    def chunk_shape(self, k: int) -> tuple[int, int]:
        """Cells (at most) and quadrature nodes per chunk for cells with ``k`` moving slots."""
        p, d, n_nodes = self.encoder.n_peaks, self.encoder.n_dims, len(self.alphas)
        heads = self.blocks[0].n_heads if self.blocks else 1
        per_point = 12 * p * d + 2 * k * d  # tokens kept for the backward
        for i in range(len(self.blocks)):
            opened = i == 0 and self.first is not None and k < p
            per_point += heads * (5 * k * (p - k) + 2 * k * k if opened else DENSE_WEIGHT * p * p + 8 * p)
        points = max(1, self.chunk_floats // per_point)
        if points < n_nodes:
            return 1, points
        return (1 if self.one_cell else points // n_nodes), n_nodes

    def _group(self, acc: torch.Tensor, rest: torch.Tensor, order: torch.Tensor, k: int) -> torch.Tensor:
        """Integrated gradients (n, k) of ``n`` cells with ``k`` moving slots, ``order[:, :k]``."""
        n_cells, n_nodes = self.chunk_shape(k)
        out = torch.empty(len(acc), k, dtype=acc.dtype, device=acc.device)
        for c in range(0, len(acc), n_cells):
            rows = slice(c, c + n_cells)
            fixed = torch.addmm(self.const, rest[rows], self.w_rest_t)  # (cells, H)
            chunk = _CellChunk(self, acc[rows], fixed, order[rows], k)
            out[rows] = sum(chunk.gradient(self.alphas[s:s + n_nodes], self.steps[s:s + n_nodes])
                            for s in range(0, len(self.alphas), n_nodes))
        return out

    def head_grad(self, z: torch.Tensor) -> torch.Tensor:
        """d output / d (head pre-activation) at ``z`` (..., hidden)."""
        if self.head_scale is not None:  # ReLU -> BatchNorm -> Dropout -> Linear in eval: masked constant row
            return (z > 0).to(z.dtype) * self.head_scale
        points = z.reshape(-1, z.shape[-1]).detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.rest(points).sum(), points)
        return grad.view(z.shape)


class _CellChunk:
    """What the cells of a chunk (one open count) share across their quadrature nodes: slots, closed tokens,
    head weights in slot order."""

    def __init__(self, engine: FastPeakEngine, acc: torch.Tensor, fixed: torch.Tensor, order: torch.Tensor,
                 k: int) -> None:
        self.engine, self.k = engine, k
        enc = engine.encoder
        n, p = order.shape
        self.slots, closed = order[:, :k], order[:, k:]
        self.acc = acc.gather(1, self.slots)  # (n, k)
        self.breaks = enc.breaks[self.slots]  # (n, k, merge hidden)
        self.rows0 = enc.offsets[self.slots].unsqueeze(-1)  # (n, k, 1): table row of interval 0
        self.w_head = engine.w_head[:, order].transpose(0, 1).reshape(n, engine.w_head.shape[0], -1)  # (n, h, P D)
        self.fixed = fixed.unsqueeze(1)  # (n, 1, hidden)
        self.static: Static | None = None
        self.x_closed = engine.x0[closed]  # (n, P - k, D)
        if not engine.blocks:  # nothing mixes the tokens: the closed ones are a constant of the head
            closed_w = self.w_head[:, :, k * enc.n_dims:]
            self.fixed = torch.baddbmm(self.fixed, self.x_closed.view(n, 1, -1), closed_w.transpose(1, 2))
            self.w_head = self.w_head[:, :, :k * enc.n_dims]
        elif engine.first is not None and k < p:
            self.static = engine.first.static(closed)

    def merge(self, alphas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The moving slots' tokens (n, K, k, D) at the nodes ``alphas`` and their slope in accessibility."""
        enc = self.engine.encoder
        a = self.acc.unsqueeze(-1) * alphas  # (n, k, K)
        rows = torch.searchsorted(self.breaks, a) + self.rows0
        cd = torch.nn.functional.embedding(rows, enc.table)  # (n, k, K, 2 D)
        d = enc.n_dims
        pre = torch.addcmul(cd[..., :d], a.unsqueeze(-1), cd[..., d:])
        slope = relu_backward(cd[..., d:], pre)
        return pre.relu_().transpose(1, 2).contiguous(), slope.transpose(1, 2)

    def gradient(self, alphas: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Sum over the nodes of ``step * d output / d acc`` of the moving slots, (n, k)."""
        eng, k = self.engine, self.k
        x, slope = self.merge(alphas)
        n, nk, _, d = x.shape
        saved = []
        if self.static is not None:
            x, s0 = eng.first.forward(x, self.static)
            saved.append(s0)
            dense = eng.blocks[1:]
        else:
            dense = eng.blocks
            if dense and self.x_closed.shape[1]:
                x = torch.cat([x, self.x_closed.unsqueeze(1).expand(-1, nk, -1, -1)], dim=2)
        x = x.reshape(n * nk, -1, d)
        for block in dense:
            x, s = block.forward(x)
            saved.append(s)
        z = torch.baddbmm(self.fixed, x.view(n, nk, -1), self.w_head.transpose(1, 2))
        dx = torch.bmm(eng.head_grad(z), self.w_head).view(n * nk, -1, d)
        for block in reversed(dense):
            dx = block.backward(dx, saved.pop())
        if self.static is not None:
            dx = eng.first.backward(dx, saved.pop())
        da = (dx.view(n, nk, -1, d)[:, :, :k] * slope).sum(dim=3)  # (n, K, k)
        return torch.bmm(steps.expand(n, 1, -1), da).squeeze(1)
