"""Saturation mutagenesis (upstream's ``saturation_mutagenesis``): which bases of a gene's peaks drive it.

For every position of each chosen peak and every base other than the stored one, the rate is predicted
for every selected cell (the structured engine: :class:`~cell2net_attr.engines.mutagenesis.MutagenesisEngine`;
the reference engine is upstream's plain forward). Only sums over the cells are kept, per group of
``--groupby``: upstream's effect is a function of the means (:mod:`cell2net_attr.engines.ism_effect`).
Each finished peak's sums are saved (:class:`~cell2net_attr.io.partial.KeyedParts`), so an interrupted job
resumes at the next peak; the job's output lives under the one lifecycle (:mod:`.lifecycle`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from ..data.obs_groups import ObsGroups, read_obs_groups
from ..data.rows import SharedRows
from ..data.selection import read_tokens
from ..engines.ism_effect import N_RULES, ism_effect, upstream_mutants
from ..engines.predict import UPSTREAM_BATCH
from ..engines.registry import PREDICTORS, make_predictor
from ..errors import UserError, suggest
from ..io.formats import OutputFormat, check_output
from ..io.mutagenesis_io import BASES, MutagenesisResult, check_mutagenesis_output, seq_path, write_mutagenesis
from ..io.partial import KeyedParts
from ..io.schema import PredictionIdentity, canonical_options
from ..io.writers import check_output_path
from .binding import AttributionModel, load_model
from .gene_job import Selection
from .lifecycle import Lifecycle
from .options import JobOptions, check_batching
from .progress import NullProgress, Progress, make_progress
from .stream import JOB_READ_ROWS, stream
from .threads import set_threads
from .training_check import check_training

#: Label of the one group of a job without ``--groupby``.
ALL_CELLS = "all cells"


@dataclass(frozen=True)
class Reduction:
    """How per-mutant means become upstream's effect (its ``saturation_mutagenesis`` arguments)."""

    multiply_by_inputs: bool = True
    logfc: bool = False
    smoothing: bool = True
    window_size: int = 3
    n_rule: str = "upstream"

    def check(self, peak_len: int) -> None:
        """Refuse values upstream's reduction cannot take, naming the parameter."""
        if self.n_rule not in N_RULES:
            raise UserError(f"unknown N rule '{self.n_rule}', choose from {', '.join(N_RULES)}", param="n_rule")
        w = self.window_size
        if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= peak_len:
            raise UserError(f"must be an integer in [1, {peak_len}] (the peak length), got {w!r}",
                            param="window_size")


def check_predictor(engine: str) -> None:
    """A rate engine's name (``fast`` or ``reference``)."""
    if engine not in PREDICTORS:
        raise UserError(f"unknown engine '{engine}', choose from {', '.join(PREDICTORS)}", param="engine")


def resolve_peaks(tokens: list[str] | list[int] | str | int | None, peaks: list[str]) -> list[int]:
    """Peak positions from names, positions (0-based, ``-1`` the last) or ``all`` (None also means all)."""
    if tokens is None or tokens == "all" or tokens == ["all"]:
        return list(range(len(peaks)))
    items = tokens if isinstance(tokens, (list, tuple)) else [tokens]
    index = {p: i for i, p in enumerate(peaks)}
    out: list[int] = []
    for item in items:
        text = str(item)
        if text in index:
            out.append(index[text])
        elif text.lstrip("-").isdigit() and -len(peaks) <= int(text) < len(peaks):
            out.append(int(text) % len(peaks))
        else:
            raise UserError(f"'{text}' is not one of the gene's {len(peaks)} peaks (a name, or a position "
                            f"0..{len(peaks) - 1}){suggest(text, peaks)}", param="peak")
    twice = sorted({peaks[i] for i in out if out.count(i) > 1})
    if twice:
        raise UserError(f"peak(s) {twice[:3]} given more than once", param="peak")
    return out


class MutagenesisJob:
    """One gene's saturation mutagenesis over the selected cells, per group: its engine, its finished peaks
    (saved for ``--resume`` when it writes a file) and its output."""

    def __init__(self, model: AttributionModel, peaks: list[int], selection: Selection, reduction: Reduction,
                 engine: str, groups: ObsGroups | None, output: tuple[Path, OutputFormat] | None = None,
                 identity: PredictionIdentity | None = None, resume: bool = False, return_seq: bool = False,
                 read_rows: int = JOB_READ_ROWS, provenance: dict | None = None) -> None:
        self.model, self.peaks, self.selection, self.reduction = model, peaks, selection, reduction
        self.engine_name, self.read_rows, self.return_seq, self.failed = engine, read_rows, return_seq, None
        self.groupby = groups.column if groups is not None else None
        rows = selection.rows
        if groups is None:
            self.labels, codes = [ALL_CELLS], np.zeros(len(rows), dtype=np.int64)
        else:
            self.labels, codes = [str(g) for g in groups.order], groups.codes[rows]
        kept = codes >= 0  # cells whose group is missing (NaN) are left out, as summarize leaves them out
        self.rows, self.codes = rows[kept], codes[kept]
        if not len(self.rows):
            raise UserError(f"no selected cell has a value in obs column '{groups.column}'", param="groupby")
        seq = torch.from_numpy(model.data.peak_seq).to(model.device)
        self.engine = make_predictor(engine, model.module, seq, torch.from_numpy(model.data.peak_dist).to(model.device))
        self.output, self.identity, self.attrs = output, identity, None
        self.parts: KeyedParts | None = None
        self.done: dict[int, dict[str, np.ndarray]] = {}
        if output is not None:
            self.attrs = {**identity.attrs(), "tool": "cell2net-attr", "tool_version": __version__,
                          "device": str(model.device), **(provenance or {})}
            self.parts = KeyedParts(output[0], identity.attrs(), resume, lambda m: warnings.warn(m, stacklevel=2),
                                    prefix="peak")
            self.done = self.parts.done

    @property
    def gene(self) -> str:
        """The gene."""
        return self.model.gene

    def compute(self, num_workers: int = 0, progress: Progress | None = None) -> None:
        """Every peak not yet done, each over every selected cell (read block by block)."""
        todo = [p for p in self.peaks if p not in self.done]
        progress = progress or NullProgress()
        progress.start(len(todo) * len(self.rows), f"{self.gene}: {len(todo)} peak(s)", "cell-peaks")
        try:
            for p in todo:
                sums = self._peak_sums(p, num_workers, progress)
                if self.parts is not None:
                    self.parts.save(p, sums)
                else:
                    self.done[p] = sums
        finally:
            progress.stop()

    def _peak_sums(self, peak: int, num_workers: int, progress: Progress) -> dict[str, np.ndarray]:
        """Sums over each group's cells of the reference rate and of every mutant's rate of ``peak``."""
        positions, bases = upstream_mutants(self.model.data.peak_seq[peak])
        device, n_groups = self.model.device, len(self.labels)
        ref = torch.zeros(n_groups, dtype=torch.float64, device=device)
        alt = torch.zeros(n_groups, len(positions), dtype=torch.float64, device=device)
        codes = torch.from_numpy(self.codes).to(device)
        reader = SharedRows([self.model.data])

        def feed(start: int, batch) -> None:
            tensors = [torch.from_numpy(x).to(device) for x in (batch.peak_acc, batch.tf_exp, batch.covariates)]
            member = torch.nn.functional.one_hot(codes[start : start + len(batch)], n_groups).T.double()  # (G, B)
            ref.add_(member @ self.engine.reference_rates(*tensors).double())
            alt.add_(member @ self.engine.mutant_rates(peak, positions, bases, *tensors).double())

        stream([feed], reader.read, self.rows, self.read_rows, num_workers, progress.advance)
        n = np.bincount(self.codes, minlength=n_groups)
        return {"ref": ref.cpu().numpy(), "alt": alt.cpu().numpy(), "n": n, "positions": positions, "bases": bases}

    def result(self) -> MutagenesisResult:
        """Effects and means of every peak and group (a group without cells is NaN)."""
        data, r = self.model.data, self.reduction
        length = data.peak_seq.shape[1]
        n_groups = len(self.labels)
        effect = np.full((n_groups, len(self.peaks), 4, length), np.nan)
        mean_alt = np.full((n_groups, len(self.peaks), 4, length), np.nan)
        n_cells = self.done[self.peaks[0]]["n"]
        mean_ref = np.full(n_groups, np.nan)
        for j, p in enumerate(self.peaks):
            sums = self.done[p]
            for g in np.flatnonzero(n_cells):
                mean_ref[g] = sums["ref"][g] / n_cells[g]
                mean_alt[g, j, sums["bases"], sums["positions"]] = sums["alt"][g] / n_cells[g]
                effect[g, j] = ism_effect(sums["ref"][g], sums["alt"][g], int(n_cells[g]), data.peak_seq[p],
                                          multiply_by_inputs=r.multiply_by_inputs, logfc=r.logfc,
                                          smoothing=r.smoothing, window_size=r.window_size, n_rule=r.n_rule)
        sequences = [_sequence(data.peak_seq[p]) for p in self.peaks]
        return MutagenesisResult(self.gene, [data.peaks[p] for p in self.peaks], sequences, self.labels,
                                 self.groupby, n_cells, mean_ref, mean_alt, effect)

    def write_output(self) -> None:
        """The output file, renamed into place; then the saved peaks are removed."""
        if self.output is None:
            return
        write_mutagenesis(self.output[0], self.output[1], self.result(), self.attrs, self.return_seq)
        self.parts.discard()

    @property
    def resumable(self) -> bool:
        """Whether it writes a file (an interrupt then says how to continue)."""
        return self.output is not None

    def save(self) -> int:
        """Finished peaks are saved as they finish: how many there are."""
        return len(self.done)

    def discard(self) -> None:
        """Remove the saved peaks."""
        if self.parts is not None:
            self.parts.discard()

    def resume_note(self, saved: int) -> str:
        """What was saved, where, and how to continue."""
        where = self.parts.dir if self.parts is not None else "memory"
        return f"{saved}/{len(self.peaks)} peaks saved in {where}; rerun the same command with --resume to continue"


def _sequence(onehot: np.ndarray) -> str:
    """The stored sequence of a (L, 4) one-hot (an all-zero row is ``N``)."""
    letters = np.array(list(BASES + "N"))
    index = np.where(onehot.any(axis=1), onehot.argmax(axis=1), 4)
    return "".join(letters[index])


def mutagenesis_identity(model: AttributionModel, selection: Selection, data_sha256: str, engine: str, fmt: str,
                         peaks: list[int], reduction: Reduction, groupby: str | None) -> PredictionIdentity:
    """What a mutagenesis output must match to count as this run's."""
    options = {"peaks": [model.data.peaks[p] for p in peaks], "multiply_by_inputs": reduction.multiply_by_inputs,
               "logfc": reduction.logfc, "smoothing": reduction.smoothing, "window_size": reduction.window_size,
               "n_rule": reduction.n_rule}
    return PredictionIdentity(kind="mutagenesis", gene=model.gene, engine=engine, format=fmt,
                              covariates=",".join(model.covariates),
                              checkpoint_sha256=model.checkpoint.sha256 if model.checkpoint else "",
                              data_sha256=data_sha256, selection_sha256=selection.digest,
                              n_rows_total=len(selection.rows), groupby=groupby or "",
                              options=canonical_options(options))


@dataclass
class MutagenesisOptions(JobOptions):
    """Everything ``cell2net-attr mutagenesis`` takes besides the input files: upstream's arguments, the peaks,
    the cells (``--idx``, ``--where``) and the groups (``--groupby``)."""

    peaks: list[str] | None = None  # names or positions; None or ["all"]: every peak of the gene
    multiply_by_inputs: bool = True
    logfc: bool = False
    smoothing: bool = True
    window_size: int = 3
    return_seq: bool = False
    n_rule: str = "upstream"
    groupby: str | None = None

    def reduction(self) -> Reduction:
        """Upstream's reduction arguments."""
        return Reduction(self.multiply_by_inputs, self.logfc, self.smoothing, self.window_size, self.n_rule)


@dataclass
class MutagenesisRun:
    """What a ``mutagenesis`` run produced."""

    gene: str
    path: Path
    n_cells: int
    n_peaks: int
    n_groups: int
    engine: str
    device: str


def default_mutagenesis_output(gene: str) -> Path:
    """``<gene>.mutagenesis.h5`` in the working directory."""
    return Path(f"{gene}.mutagenesis.h5")


def run_mutagenesis(checkpoint: Path, data: Path, opts: MutagenesisOptions,
                    progress: Progress | None = None) -> MutagenesisRun:
    """Check everything, compute every peak (resumable), and write the output atomically."""
    check_predictor(opts.engine)
    batch = opts.batch_size if opts.batch_size is not None else UPSTREAM_BATCH
    check_batching(batch, opts.num_workers)
    set_threads(opts.threads)
    checkpoint, data = Path(checkpoint), Path(data)
    gene = opts.gene or checkpoint.stem
    out = Path(opts.out) if opts.out else default_mutagenesis_output(gene)
    fmt = check_output(out, opts.overwrite, [checkpoint, data])
    if opts.return_seq and fmt.name == "npy":
        check_output_path(seq_path(out), opts.overwrite, [checkpoint, data])
    tokens = read_tokens(opts.idx) if opts.idx is not None else None
    with Lifecycle() as life:
        life.claim_or_fail(out)
        check_output(out, opts.overwrite, [checkpoint, data])
        model = load_model(checkpoint, data, gene, opts.covariates, opts.device, opts.rna_mod, opts.atac_mod,
                           opts.hdf5_locking)
        try:
            job = life.add(_open_job(model, opts, tokens, (out, fmt), checkpoint, data, batch))
            check_training([model])
            job.compute(opts.num_workers, progress or make_progress(opts.quiet))
            life.finish(job)
        finally:
            model.close()
    return MutagenesisRun(model.gene, out, len(job.rows), len(job.peaks), len(job.labels), opts.engine,
                          str(model.device))


def _open_job(model: AttributionModel, opts: MutagenesisOptions, tokens: list[str] | None,
              out: tuple[Path, OutputFormat], checkpoint: Path, data: Path, batch: int) -> MutagenesisJob:
    """The gene's job, after every check that needs the model and the data."""
    index, reduction = model.data.index, opts.reduction()
    reduction.check(model.data.peak_seq.shape[1])
    peaks = resolve_peaks(opts.peaks, model.data.peaks)
    selection = Selection.resolve(index, tokens, opts.idx_type, opts.where)
    groups = read_obs_groups(index.store, opts.groupby) if opts.groupby else None
    check_mutagenesis_output(out[1], len(peaks), len(groups.order) if groups else 1, out[0])
    identity = mutagenesis_identity(model, selection, index.sha256, opts.engine, out[1].name, peaks, reduction,
                                    opts.groupby)
    provenance = {"checkpoint": str(checkpoint), "data": str(data), "data_layout": model.data.layout}
    read_rows = max(batch, JOB_READ_ROWS if opts.engine == "fast" else batch)
    return MutagenesisJob(model, peaks, selection, reduction, opts.engine, groups, out, identity, opts.resume,
                          opts.return_seq, read_rows, provenance)
