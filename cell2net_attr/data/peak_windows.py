"""Where each peak's stored sequence lies on the genome, and which peak windows hold each variant.

A peak's *window* is the genome interval its stored sequence was fetched from, 0-based and
half-open. With ``start``/``end`` columns in the peak table (what upstream's ``add_dna_sequence``
fetched) they are the window; without them it follows upstream's ``add_peaks`` rule on the name
``chrom-start-end``: ``mid = (start + end) // 2``, window ``[mid - L // 2, mid - L // 2 + L)`` for a
stored sequence of length ``L``. A VCF position ``pos`` (1-based) then sits at offset
``pos - 1 - window start`` of the stored sequence.

:class:`WindowIndex` finds, for millions of variants at once, every (gene, peak, offset) whose
window holds each one, with sorted arrays and binary search (no loop over variants or windows).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import UserError
from .variants import SKIP_COLUMNS

WINDOW_COLUMNS = ("peak", "chrom", "start", "end", "sequence")
HIT_COLUMNS = ("variant", "id", "chrom", "pos", "ref", "alt", "line", "gene", "peak", "offset")
OUTSIDE = "outside every modelled peak window"

# Upstream's delimiter is a regex (default "-"); names seen: chr1-100-200, chr1:100-200, chr1_100_200.
# The chromosome is everything before the last two numbers, so "chrUn_KI270302v1-10-20" parses.
_NAME = re.compile(r"^(.+)[-:_]([0-9]+)[-:_]([0-9]+)$")
# Search keys pack (chromosome, coordinate) in one int64: code * _STRIDE + coordinate + _SHIFT.
_SHIFT = 2**32
_MAX_COORD = 2**35
_STRIDE = 2**36


def parse_peak_name(name: str) -> tuple[str, int, int] | None:
    """``(chrom, start, end)`` from ``chr1-100-200``, ``chr1:100-200`` or ``chr1_100_200``; else ``None``."""
    match = _NAME.match(name)
    if match is None:
        return None
    chrom, start, end = match.groups()
    return chrom, int(start), int(end)


def name_window(name: str, length: int, source: str | None = None) -> tuple[str, int, int]:
    """The window of a peak without start/end columns, by upstream's ``add_peaks`` rule."""
    parsed = parse_peak_name(name)
    if parsed is None:
        raise UserError(f"peak '{name}': the peak table has no start/end columns and the name is not "
                        f"chrom-start-end (nor chrom:start-end, chrom_start_end), so its place on the "
                        f"genome is unknown", source)
    chrom, start, end = parsed
    first = (start + end) // 2 - length // 2
    return chrom, first, first + length


def peak_windows(peaks: Sequence[str], sequences: Sequence[str], *, chrom: Sequence[str] | None = None,
                 start: Sequence[int] | None = None, end: Sequence[int] | None = None,
                 source: str | None = None) -> pd.DataFrame:
    """The window of every peak, one row each in the given order.

    Parameters
    ----------
    peaks, sequences
        Peak names and their stored sequences (``atac.uns["peaks"]`` index and ``sequence``).
    chrom, start, end
        The peak table's ``chr``/``start``/``end`` columns where it has them. With ``start`` and ``end``
        the window is ``[start, end)`` and must be as long as the sequence; without them it comes from
        the name. ``chrom`` defaults to the name's chromosome; given with name windows, it must agree.
    source
        The file, for error messages.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`WINDOW_COLUMNS`: ``start``/``end`` int64, ``sequence`` upper case.
    """
    names = [str(p) for p in peaks]
    if len(sequences) != len(names) or any(len(c) != len(names) for c in (chrom, start, end) if c is not None):
        raise ValueError("peaks, sequences, chrom, start and end must have one entry per peak")
    if (start is None) != (end is None):
        raise UserError(f"the peak table has a{' start' if end is None else 'n end'} column but no "
                        f"{'end' if end is None else 'start'} column", source)
    seqs = [_sequence(n, s, source) for n, s in zip(names, sequences)]
    given = None if chrom is None else [_chrom(n, c, source) for n, c in zip(names, chrom)]
    if start is None:
        rows = [name_window(n, len(s), source) for n, s in zip(names, seqs)]
        if given is not None:
            for n, g, (c, _, _) in zip(names, given, rows):
                if g != c:
                    raise UserError(f"peak '{n}': its chromosome column says '{g}' but its name says '{c}'",
                                    source)
        chroms, first, last = ([r[i] for r in rows] for i in range(3))
        for n, a, b in zip(names, first, last):
            if a < -_SHIFT or b > _MAX_COORD:
                raise UserError(f"peak '{n}': its window {a}-{b} is outside any chromosome", source)
    else:
        first = [_coordinate(n, v, "start", source) for n, v in zip(names, start)]
        last = [_coordinate(n, v, "end", source) for n, v in zip(names, end)]
        chroms = given if given is not None else [_name_chrom(n, source) for n in names]
        for n, a, b, s in zip(names, first, last, seqs):
            if b - a != len(s):
                raise UserError(f"peak '{n}': its window start {a}, end {b} spans {b - a} bp but its stored "
                                f"sequence has {len(s)}", source)
    return pd.DataFrame({"peak": pd.Series(names, dtype=object), "chrom": pd.Series(chroms, dtype=object),
                         "start": np.asarray(first, dtype=np.int64), "end": np.asarray(last, dtype=np.int64),
                         "sequence": pd.Series(seqs, dtype=object)})


def _sequence(name: str, seq: object, source: str | None) -> str:
    if isinstance(seq, bytes):
        seq = seq.decode("ascii", "replace")
    if not isinstance(seq, str):
        raise UserError(f"peak '{name}': its stored sequence is {type(seq).__name__}, not text", source)
    if not seq.isascii():
        raise UserError(f"peak '{name}': its stored sequence has non-ASCII letters", source)
    return seq.upper()


def _chrom(name: str, value: object, source: str | None) -> str:
    if not isinstance(value, str) or not value:
        raise UserError(f"peak '{name}': no chromosome ({value!r})", source)
    return value


def _name_chrom(name: str, source: str | None) -> str:
    parsed = parse_peak_name(name)
    if parsed is None:
        raise UserError(f"peak '{name}': the peak table has no chromosome column and the name is not "
                        f"chrom-start-end", source)
    return parsed[0]


def _coordinate(name: str, value: object, what: str, source: str | None) -> int:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number) or number != int(number):
        raise UserError(f"peak '{name}': its {what} {value!r} is not an integer", source)
    if not -_SHIFT <= number <= _MAX_COORD:
        raise UserError(f"peak '{name}': its {what} {int(number)} is outside any chromosome", source)
    return int(number)


def _check_spans(table: pd.DataFrame, source: str | None) -> None:
    """Each window as long as its sequence and within the coordinates the search keys can hold."""
    start, end = table["start"].to_numpy(np.int64), table["end"].to_numpy(np.int64)
    length = table["sequence"].map(len).to_numpy(np.int64)
    wrong = np.flatnonzero((end - start != length) | (start < -_SHIFT) | (end > _MAX_COORD))
    if len(wrong):
        i = wrong[0]
        raise UserError(f"peak '{table['peak'].iat[i]}': window start {start[i]}, end {end[i]} does not fit "
                        f"its stored sequence of {length[i]} bp on a chromosome", source)


@dataclass(frozen=True)
class Placement:
    """Variants placed in peak windows.

    Attributes
    ----------
    hits
        One row per (variant, gene, peak) whose window holds the variant and whose stored base is
        REF; columns :data:`HIT_COLUMNS` (``variant`` the row number in the SNV table, ``offset`` 0-based
        in the stored sequence); ordered by variant, then by the rows of ``gene_peaks``.
    skipped
        Columns :data:`~cell2net_attr.data.variants.SKIP_COLUMNS`: one row per variant outside every
        window (``kind`` ``outside``, ``peak`` ""), and one per (variant, peak) where the stored base is
        not REF (``ref_mismatch``, ``stored_n``, ``stored_not_acgt``). A variant may have hits in some
        peaks and be skipped in others.
    """

    hits: pd.DataFrame
    skipped: pd.DataFrame


class WindowIndex:
    """The peak windows of many genes, sorted for finding the windows that hold each variant.

    Parameters
    ----------
    windows
        Columns :data:`WINDOW_COLUMNS` (as :func:`peak_windows` returns), one row per peak; a peak
        listed twice with the same window is kept once, with two different windows is an error.
    gene_peaks
        Columns ``gene``, ``peak``: which genes model which peaks (``uns["peak_to_gene"]``). Only
        these windows are searched. ``None``: every window, with gene "".
    source
        The file, for error messages.
    """

    def __init__(self, windows: pd.DataFrame, gene_peaks: pd.DataFrame | None = None, *,
                 source: str | None = None) -> None:
        table = windows.loc[:, list(WINDOW_COLUMNS)].drop_duplicates().reset_index(drop=True)
        clash = table["peak"][table["peak"].duplicated()]
        if len(clash):
            raise UserError(f"peak '{clash.iloc[0]}' has two different windows or sequences", source)
        _check_spans(table, source)
        if gene_peaks is None:
            gene_peaks = pd.DataFrame({"gene": "", "peak": table["peak"]})
        pairs = gene_peaks.loc[:, ["gene", "peak"]].drop_duplicates().reset_index(drop=True)
        at = pd.Index(table["peak"]).get_indexer(pairs["peak"])
        if (at < 0).any():
            absent = pairs["peak"][at < 0].unique()[:5].tolist()
            raise UserError(f"peak(s) {absent} of the modelled genes have no window", source)
        used = np.unique(at)
        self.windows = table.iloc[used].reset_index(drop=True)
        self.gene_peaks = pairs.assign(window=np.searchsorted(used, at))
        self._chroms = pd.Index(np.unique(self.windows["chrom"].to_numpy(dtype=str)))
        self._build()

    @property
    def chroms(self) -> frozenset[str]:
        """Chromosomes with at least one window (for ``read_variants(chroms=...)``)."""
        return frozenset(self._chroms)

    def _build(self) -> None:
        w = self.windows
        code = self._chroms.get_indexer(w["chrom"].to_numpy(dtype=str)).astype(np.int64)
        start = code * _STRIDE + w["start"].to_numpy(np.int64) + _SHIFT
        end = code * _STRIDE + w["end"].to_numpy(np.int64) + _SHIFT
        length = end - start
        # Length classes (powers of two): a window holding q starts in (q - longest, q] of its class.
        self._classes = []
        live = length > 0
        klass = np.zeros(len(w), dtype=np.int64)
        klass[live] = np.floor(np.log2(length[live])).astype(np.int64)
        for k in np.unique(klass[live]):
            members = np.flatnonzero(live & (klass == k))
            order = members[np.argsort(start[members], kind="stable")]
            self._classes.append((start[order], end[order], order, int(length[order].max())))
        order = np.argsort(start, kind="stable")
        cover = np.maximum.accumulate(end[order]) if len(order) else end[order]
        fresh = np.ones(len(order), dtype=bool)
        fresh[1:] = start[order][1:] > cover[:-1]
        last = np.r_[np.flatnonzero(fresh)[1:] - 1, len(order) - 1] if len(order) else np.array([], np.int64)
        self._union = (start[order][fresh], cover[last])  # disjoint, sorted: the union of all windows
        seqs = w["sequence"].tolist()
        self._bases = np.frombuffer("".join(seqs).upper().encode("ascii"), dtype=np.uint8)
        self._seq_at = np.r_[0, np.cumsum([len(s) for s in seqs])].astype(np.int64)[:-1]
        per_window = np.argsort(self.gene_peaks["window"].to_numpy(), kind="stable")
        self._pair_order = per_window
        self._pair_ptr = np.searchsorted(self.gene_peaks["window"].to_numpy()[per_window],
                                         np.arange(len(w) + 1))

    def _keys(self, chrom: np.ndarray, coord: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Search keys of queries on known chromosomes and the positions of those queries."""
        code = self._chroms.get_indexer(np.asarray(chrom, dtype=object))
        known = np.flatnonzero(code >= 0)
        coord = np.clip(np.asarray(coord, dtype=np.int64)[known], -_SHIFT, _MAX_COORD)
        return code[known].astype(np.int64) * _STRIDE + coord + _SHIFT, known

    def overlaps(self, chrom: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Whether each 0-based half-open interval meets at least one window (a ``read_variants`` keep filter)."""
        out = np.zeros(len(chrom), dtype=bool)
        lo, known = self._keys(chrom, start)
        hi = lo + (np.asarray(end, dtype=np.int64) - np.asarray(start, dtype=np.int64))[known]
        u_start, u_end = self._union
        i = np.searchsorted(u_end, lo, side="right")
        inside = i < len(u_start)
        inside[inside] = u_start[i[inside]] < hi[inside]
        out[known] = inside
        return out

    def find(self, chrom: np.ndarray, pos0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every (query, window) pair whose window holds the 0-based position, sorted by query then window.

        Returns two int64 arrays of equal length: query numbers and row numbers of :attr:`windows`.
        """
        q, known = self._keys(chrom, pos0)
        found_q, found_w = [], []
        for starts, ends, order, longest in self._classes:
            lo = np.searchsorted(starts, q - longest + 1, side="left")
            hi = np.searchsorted(starts, q, side="right")
            count = hi - lo
            which = np.repeat(np.arange(len(q)), count)
            j = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count - lo, count)
            holds = ends[j] > q[which]
            found_q.append(known[which[holds]])
            found_w.append(order[j[holds]])
        qs = np.concatenate(found_q) if found_q else np.array([], dtype=np.int64)
        ws = np.concatenate(found_w) if found_w else np.array([], dtype=np.int64)
        sort = np.lexsort((ws, qs))
        return qs[sort].astype(np.int64), ws[sort].astype(np.int64)

    def place(self, snvs: pd.DataFrame) -> Placement:
        """Place SNVs (columns chrom, pos (1-based), ref, alt, id, line) in the windows and check REF."""
        pos = snvs["pos"].to_numpy(np.int64)
        q, w = self.find(snvs["chrom"].to_numpy(), pos - 1)
        offset = pos[q] - 1 - self.windows["start"].to_numpy(np.int64)[w]
        stored = self._bases[self._seq_at[w] + offset].view("S1").astype(str)
        ref = snvs["ref"].to_numpy(dtype=object)[q].astype(str)
        good = np.char.upper(ref) == stored
        hits = self._expand(snvs, q[good], w[good], offset[good])
        placed = np.zeros(len(snvs), dtype=bool)
        placed[q] = True
        outside = np.flatnonzero(~placed)
        bad = np.flatnonzero(~good)
        skipped = _skip_rows(snvs, outside, bad, q, w, offset, stored, self.windows["peak"].to_numpy())
        return Placement(hits, skipped)

    def _expand(self, snvs: pd.DataFrame, q: np.ndarray, w: np.ndarray, offset: np.ndarray) -> pd.DataFrame:
        """One hit row per gene of each (variant, window) pair, ordered by variant then ``gene_peaks`` row."""
        count = self._pair_ptr[w + 1] - self._pair_ptr[w]
        which = np.repeat(np.arange(len(q)), count)
        j = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count - self._pair_ptr[w], count)
        pair = self._pair_order[j]
        sort = np.lexsort((pair, q[which]))
        which, pair = which[sort], pair[sort]
        rows = snvs.iloc[q[which]]
        return pd.DataFrame({
            "variant": q[which], "id": rows["id"].to_numpy(), "chrom": rows["chrom"].to_numpy(),
            "pos": rows["pos"].to_numpy(np.int64), "ref": rows["ref"].to_numpy(), "alt": rows["alt"].to_numpy(),
            "line": rows["line"].to_numpy(np.int64), "gene": self.gene_peaks["gene"].to_numpy()[pair],
            "peak": self.gene_peaks["peak"].to_numpy()[pair], "offset": offset[which].astype(np.int64),
        }, columns=list(HIT_COLUMNS))


def _skip_rows(snvs: pd.DataFrame, outside: np.ndarray, bad: np.ndarray, q: np.ndarray, w: np.ndarray,
               offset: np.ndarray, stored: np.ndarray, peaks: np.ndarray) -> pd.DataFrame:
    """Skipped rows in file order: variants outside every window, and (variant, peak) pairs failing REF."""
    kinds, reasons = [], []
    for k in bad:  # few: a REF check fails only on bad data
        chrom, pos, ref = snvs["chrom"].iat[q[k]], snvs["pos"].iat[q[k]], snvs["ref"].iat[q[k]]
        where = f"{chrom}:{pos} (peak {peaks[w[k]]}, offset {offset[k]})"
        base = stored[k]
        if base == "N":
            kinds.append("stored_n")
            reasons.append(f"the stored sequence has N at {where}: no base to change")
        elif base in ("A", "C", "G", "T"):
            kinds.append("ref_mismatch")
            reasons.append(f"REF {ref} but the stored sequence has {base} at {where}: another genome build?")
        else:
            kinds.append("stored_not_acgt")
            reasons.append(f"the stored sequence has '{base}' (not A, C, G, T) at {where}")
    which = np.concatenate([outside, q[bad]]).astype(np.int64)
    sort = np.argsort(which, kind="stable")
    table = snvs.iloc[which[sort]]
    out = pd.DataFrame({c: table[c].to_numpy() for c in ("chrom", "pos", "ref", "alt", "id", "line")})
    for c in ("pos", "line"):
        out[c] = out[c].astype(np.int64)
    labels = np.concatenate([np.full(len(outside), "outside", dtype=object), np.array(kinds, dtype=object)])
    texts = np.concatenate([np.full(len(outside), OUTSIDE, dtype=object), np.array(reasons, dtype=object)])
    named = np.concatenate([np.full(len(outside), "", dtype=object), peaks[w[bad]].astype(object)])
    out["kind"], out["reason"], out["peak"] = labels[sort], texts[sort], named[sort]
    return out.loc[:, list(SKIP_COLUMNS)]


def chrom_naming_hint(variant_chroms: Collection[str], window_chroms: Collection[str]) -> str | None:
    """A one-line hint when no variant chromosome is modelled but would be with(out) a ``chr`` prefix."""
    have, want = set(variant_chroms), set(window_chroms)
    if not have or have & want:
        return None
    renamed = {_toggle_chr(c) for c in have}
    if renamed & want:
        a, b = sorted(have)[0], sorted(renamed & want)[0]
        return (f"no variant is on a modelled chromosome: the variants name chromosomes like '{a}', the peaks "
                f"like '{b}' (add or remove the 'chr' prefix, e.g. with bcftools annotate --rename-chrs)")
    return (f"no variant is on a modelled chromosome: the variants are on {sorted(have)[:3]}, the peaks on "
            f"{sorted(want)[:3]}")


def _toggle_chr(name: str) -> str:
    if name in ("MT", "chrM"):
        return "chrM" if name == "MT" else "MT"
    return name[3:] if name.startswith("chr") else "chr" + name
