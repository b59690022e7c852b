"""Variant files: a VCF or a ``chrom pos ref alt [id]`` table, read line by line.

Every record is either a scorable single-base substitution (an SNV) or a skipped record with a
reason (an indel, a multi-allelic or symbolic ALT, a base outside ACGT, ...): skipping is never an
error. A file that does not parse (neither a VCF nor such a table, a data line with the wrong
number of fields, a bad position, broken gzip, binary data, an empty file) is a :class:`UserError`
naming the file and the line.

Plain and gzip-compressed files (bgzip included) are told apart by their first bytes, not their
names. A large VCF is streamed: ``chroms`` and ``keep`` drop records before they are stored, so
memory follows the records kept (a peak-window filter keeps a whole-genome VCF small).
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError

#: Columns of :attr:`VariantFile.snvs` (``pos`` 1-based, ``line`` the 1-based line in the file).
SNV_COLUMNS = ("chrom", "pos", "ref", "alt", "id", "line")
#: Columns of every skipped-record table; ``peak`` is "" unless the skip concerns one peak.
SKIP_COLUMNS = ("chrom", "pos", "ref", "alt", "id", "line", "kind", "reason", "peak")
#: The ``kind`` of a skipped record, one word each, for counting and filtering.
SKIP_KINDS = ("missing_alt", "missing_ref", "multiallelic", "symbolic", "indel", "mnv", "not_acgt",
              "same_base", "outside", "ref_mismatch", "stored_n", "stored_not_acgt")
VCF_FIXED = ("CHROM", "POS", "ID", "REF", "ALT")
TABLE_COLUMNS = ("chrom", "pos", "ref", "alt")

#: ``keep(chrom, start, end) -> mask``: the 0-based half-open span of each record's REF.
KeepFilter = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

_ACGT = frozenset("ACGT")
_SYMBOLIC = frozenset("<>[]*")
_READ_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError)


@dataclass(frozen=True)
class VariantFile:
    """What :func:`read_variants` found in one file.

    Attributes
    ----------
    source
        The file, as given.
    format
        ``"vcf"`` or ``"table"``.
    snvs
        Scorable records, file order, columns :data:`SNV_COLUMNS`; ``ref``/``alt`` upper case.
    skipped
        Records that cannot be scored, file order, columns :data:`SKIP_COLUMNS`; ``ref``/``alt`` as given.
    n_records
        Data lines read (before the ``chroms``/``keep`` filters).
    chroms_seen
        Every chromosome name in the file (filtered or not), to explain an empty result.
    """

    source: str
    format: str
    snvs: pd.DataFrame
    skipped: pd.DataFrame
    n_records: int
    chroms_seen: frozenset[str]

    @property
    def n_dropped(self) -> int:
        """Records removed by the ``chroms``/``keep`` filters (neither scored nor reported)."""
        return self.n_records - len(self.snvs) - len(self.skipped)


def default_id(chrom: str, pos: int, ref: str, alt: str) -> str:
    """The id of a record that has none: ``chrom:pos:ref:alt``."""
    return f"{chrom}:{pos}:{ref}:{alt}"


def classify(ref: str, alt: str) -> tuple[str, str] | None:
    """Why a record cannot be scored, as ``(kind, reason)``; ``None`` for a scorable SNV.

    Case does not matter (``a`` is ``A``). The checks run in the order of :data:`SKIP_KINDS`.
    """
    if alt in ("", "."):
        return "missing_alt", "no ALT allele ('.')"
    if ref in ("", "."):
        return "missing_ref", "no REF allele"
    if "," in alt:
        return "multiallelic", (f"multi-allelic ALT '{alt}': split it into one record per ALT allele "
                                "(bcftools norm -m-)")
    if _SYMBOLIC.intersection(alt) or (len(alt) > 1 and "." in (alt[0], alt[-1])):
        return "symbolic", f"symbolic or breakend ALT '{alt}': only single-base substitutions can be scored"
    if len(ref) != len(alt) or "-" in (ref, alt):
        return "indel", f"indel (REF '{ref}', ALT '{alt}'): only single-base substitutions can be scored"
    if len(ref) > 1:
        return "mnv", (f"multi-base substitution (REF '{ref}', ALT '{alt}'): "
                       "write it as one record per base")
    if ref.upper() not in _ACGT:
        return "not_acgt", f"REF '{ref}' is not one of A, C, G, T"
    if alt.upper() not in _ACGT:
        return "not_acgt", f"ALT '{alt}' is not one of A, C, G, T"
    if ref.upper() == alt.upper():
        return "same_base", f"ALT '{alt}' is the same base as REF"
    return None


def read_variants(path: str | Path, *, chroms: Collection[str] | None = None, keep: KeepFilter | None = None,
                  chunk_size: int = 65_536) -> VariantFile:
    """Read a VCF or a variant table into scorable SNVs and skipped records.

    Parameters
    ----------
    path
        ``.vcf``/``.vcf.gz`` (plain, gzip or bgzip) or a table with a header line naming the columns
        ``chrom pos ref alt`` and optionally ``id`` (any order, any case, extra columns ignored;
        tab-, comma- or space-separated, as the header line is). The format is told by the content:
        a file whose first line starts with ``##`` or is a ``#CHROM POS ID REF ALT`` header is a VCF.
    chroms
        Keep only records on these chromosomes (names compared exactly: ``chr1`` is not ``1``).
    keep
        Keep only records for which ``keep(chrom, start, end)`` is true: called with arrays for up to
        ``chunk_size`` records, ``start``/``end`` the 0-based half-open span of REF (``pos - 1``,
        ``pos - 1 + len(REF)``); for example ``WindowIndex.overlaps``.
    chunk_size
        Records buffered between calls of ``keep``.

    Every line is checked, filtered or not. A record's id is its ID field (``.`` or empty means
    none), else ``chrom:pos:ref:alt``.

    Raises
    ------
    UserError
        Naming the file and the line: an unreadable, empty or binary file, broken gzip, neither a VCF
        nor a table with those columns, a wrong number of fields, a position that is not an integer
        >= 1.
    """
    source = str(path)
    collected = _Collector(chroms, keep, chunk_size)
    with _open_text(path) as handle:
        numbered = enumerate(handle, 1)
        first = _first_line(source, numbered)
        if first[1].startswith("##") or _is_vcf_header(first[1]):
            fmt = "vcf"
            _read_vcf(source, first, numbered, collected)
        else:
            fmt = "table"
            _read_table(source, first, numbered, collected)
    snvs, skipped = collected.tables()
    return VariantFile(source, fmt, snvs, skipped, collected.n_records, frozenset(collected.seen))


# --- reading lines --------------------------------------------------------------------------------


def _open_text(path: str | Path) -> io.TextIOWrapper:
    raw: io.BufferedReader | gzip.GzipFile
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed with the TextIOWrapper
    except FileNotFoundError:
        raise UserError("no such file", path) from None
    except IsADirectoryError:
        raise UserError("is a directory, not a variant file", path) from None
    except OSError as exc:
        raise UserError(f"cannot be read ({exc.strerror or exc})", path) from None
    if raw.peek(2)[:2] == b"\x1f\x8b":  # gzip or bgzip, whatever the name
        raw.close()
        raw = gzip.open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", newline=None)  # newline=None: CRLF reads as LF


def _read_error(source: str, number: int, exc: BaseException) -> UserError:
    """A read failure (decoding, gzip) as a UserError naming the line it stopped at."""
    if isinstance(exc, UnicodeDecodeError):
        return UserError(f"line {number}: not UTF-8 text: a binary file, not a VCF or a table", source)
    what = "truncated" if isinstance(exc, EOFError) else f"unreadable ({exc})"
    return UserError(f"line {number}: the gzip stream is {what}", source)


def _text(source: str, number: int, line: str) -> str:
    """A line without its line ending; NUL bytes mean a binary file."""
    if "\x00" in line:
        raise UserError(f"line {number}: NUL bytes: a binary file, not a VCF or a table", source)
    return line.rstrip("\n")


def _first_line(source: str, numbered: Iterator[tuple[int, str]]) -> tuple[int, str]:
    number = 0
    try:
        for number, line in numbered:  # noqa: B007 - `number` names the failing line
            text = _text(source, number, line)
            if text.strip():
                return number, text
    except _READ_ERRORS as exc:
        raise _read_error(source, number + 1, exc) from None
    raise UserError("empty file: no header and no variants", source)


def _is_vcf_header(text: str) -> bool:
    fields = text.split("\t")
    return fields[0].upper() == "#CHROM" and tuple(f.upper() for f in fields[1:5]) == VCF_FIXED[1:]


def _position(source: str, number: int, text: str) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        raise UserError(f"line {number}: position '{text}' is not an integer", source)
    value = int(text)
    if value < 1:
        raise UserError(f"line {number}: position {value} is below 1 (positions are 1-based)", source)
    return value


# --- the two formats: each feeds (line, chrom, pos, ref, alt, id or "") records to the collector ------

_Record = tuple[int, str, int, str, str, str]


def _read_vcf(source: str, first: tuple[int, str], numbered: Iterator[tuple[int, str]],
              collected: _Collector) -> None:
    number, n_tabs = first[0], -1
    if not first[1].startswith("##"):
        n_tabs = first[1].count("\t")  # the first line is the #CHROM header
    buffer, seen, wanted, size = collected.buffer, collected.seen.add, collected.chroms, collected.chunk_size
    n_records = 0
    try:
        for number, line in numbered:
            # the hot loop: a data line with the header's number of fields goes straight through
            if line.count("\t") == n_tabs and line[0] != "#" and "\x00" not in line:
                chrom, pos, vid, ref, alt = line.split("\t", 5)[:5]
                if not chrom:
                    if not line.strip():
                        continue
                    raise UserError(f"line {number}: empty CHROM", source)
                value = int(pos) if pos.isascii() and pos.isdigit() else _position(source, number, pos)
                if value < 1:
                    _position(source, number, pos)
                seen(chrom)
                n_records += 1
                if wanted is None or chrom in wanted:
                    buffer.append((number, chrom, value, ref, alt.rstrip("\n"), vid))
                    if len(buffer) >= size:
                        collected.flush()
                continue
            text = _text(source, number, line)
            if not text.strip() or text.startswith("##"):
                continue
            if text.startswith("#"):
                if _is_vcf_header(text):
                    n_tabs = text.count("\t")
                elif n_tabs < 0:
                    raise UserError(f"line {number}: the header line must start with "
                                    f"#CHROM, POS, ID, REF, ALT separated by tabs", source)
                continue  # else a comment after the header line
            if n_tabs < 0:
                raise UserError(f"line {number}: a data line before the #CHROM header line", source)
            got = text.count("\t") + 1
            hint = " (fields must be separated by tabs)" if got == 1 and " " in text else ""
            raise UserError(f"line {number}: {got} fields, the #CHROM header has {n_tabs + 1}{hint}", source)
    except _READ_ERRORS as exc:
        raise _read_error(source, number + 1, exc) from None
    collected.n_records += n_records
    if n_tabs < 0:
        raise UserError("no #CHROM header line: not a VCF", source)


def _read_table(source: str, first: tuple[int, str], numbered: Iterator[tuple[int, str]],
                collected: _Collector) -> None:
    number, header = first
    sep = "\t" if "\t" in header else "," if "," in header else None
    names = [_cell(n).lstrip("#").strip().lower() for n in header.split(sep)]
    missing = [c for c in TABLE_COLUMNS if c not in names]
    if missing:
        raise UserError(f"line {number}: not a VCF (no ##fileformat or #CHROM header line) and not a "
                        f"variant table: the header line has no column {', '.join(map(repr, missing))} "
                        f"(a table needs columns chrom, pos, ref, alt and optionally id)", source)
    repeated = sorted({n for n in names if names.count(n) > 1} & {*TABLE_COLUMNS, "id"})
    if repeated:
        raise UserError(f"line {number}: the header line names column {repeated[0]!r} twice", source)
    at = [names.index(c) for c in TABLE_COLUMNS]
    at_id = names.index("id") if "id" in names else None
    try:
        for number, line in numbered:
            text = _text(source, number, line)
            if not text.strip():
                continue
            fields = text.split(sep)
            if len(fields) != len(names):
                raise UserError(f"line {number}: {len(fields)} fields, the header line has {len(names)}", source)
            chrom, pos, ref, alt = (_cell(fields[i]) for i in at)
            if not chrom:
                raise UserError(f"line {number}: empty chrom", source)
            vid = _cell(fields[at_id]) if at_id is not None else ""
            collected.seen.add(chrom)
            collected.offer((number, chrom, _position(source, number, pos), ref, alt, vid))
    except _READ_ERRORS as exc:
        raise _read_error(source, number + 1, exc) from None


def _cell(text: str) -> str:
    """A table field without surrounding spaces or double quotes (``"chr1", 100`` in a CSV)."""
    text = text.strip()
    return text[1:-1].strip() if len(text) >= 2 and text[0] == text[-1] == '"' else text


# --- filtering and classifying --------------------------------------------------------------------


class _Collector:
    """Buffers records, applies the filters a chunk at a time, and sorts the kept ones."""

    def __init__(self, chroms: Collection[str] | None, keep: KeepFilter | None, chunk_size: int) -> None:
        self.chroms = None if chroms is None else frozenset(chroms)
        self.keep = keep
        self.chunk_size = max(1, int(chunk_size))
        self.buffer: list[_Record] = []
        self.snvs: list[tuple] = []
        self.skipped: list[tuple] = []
        self.seen: set[str] = set()
        self.n_records = 0

    def offer(self, record: _Record) -> None:
        """A record not yet checked against ``chroms``."""
        if self.chroms is None or record[1] in self.chroms:
            self.add(record)
        else:
            self.n_records += 1

    def add(self, record: _Record) -> None:
        """A record on a wanted chromosome."""
        self.n_records += 1
        self.buffer.append(record)
        if len(self.buffer) >= self.chunk_size:
            self.flush()

    def flush(self) -> None:
        """Filter and classify the buffered records (the buffer list is emptied in place)."""
        chunk = self.buffer[:]
        self.buffer.clear()
        if not chunk:
            return
        if self.keep is not None:
            chunk = [r for r, k in zip(chunk, _keep_mask(self.keep, chunk)) if k]
        for number, chrom, pos, ref, alt, vid in chunk:
            why = classify(ref, alt)
            if why is None:
                ref, alt = ref.upper(), alt.upper()
            vid = vid if vid not in ("", ".") else default_id(chrom, pos, ref, alt)
            if why is None:
                self.snvs.append((chrom, pos, ref, alt, vid, number))
            else:
                self.skipped.append((chrom, pos, ref, alt, vid, number, *why, ""))

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        self.flush()
        return _frame(self.snvs, SNV_COLUMNS), _frame(self.skipped, SKIP_COLUMNS)


def _keep_mask(keep: KeepFilter, chunk: list[_Record]) -> np.ndarray:
    _, chroms, positions, refs, _, _ = zip(*chunk)
    chrom = np.array(chroms, dtype=object)
    start = np.array(positions, dtype=np.int64) - 1
    end = start + np.maximum(np.fromiter(map(len, refs), dtype=np.int64, count=len(chunk)), 1)
    mask = np.asarray(keep(chrom, start, end), dtype=bool)
    if mask.shape != (len(chunk),):
        raise ValueError(f"keep filter returned shape {mask.shape} for {len(chunk)} records")
    return mask


def _frame(rows: list[tuple], columns: tuple[str, ...]) -> pd.DataFrame:
    """A table with object text columns and int64 ``pos``/``line``, also when empty."""
    frame = pd.DataFrame.from_records(rows, columns=list(columns)) if rows else pd.DataFrame(
        {c: pd.Series([], dtype=object) for c in columns})
    for c in ("pos", "line"):
        frame[c] = frame[c].astype(np.int64)
    return frame
