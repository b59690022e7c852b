"""Resumable in-progress output: completed rows saved as chunk files beside the final output.

While a run computes, finished batches are gathered into chunks and each chunk is saved as
``.<output>.partial/chunk-<start>-<stop>-<checksum>.npz`` under a temporary name, then renamed: a
chunk file either exists whole or not at all, whatever kills the process (SIGKILL included), and a
chunk damaged afterwards (a disk or copy fault) fails its checksum and is recomputed.
``meta.json`` records the run's identity (:class:`~cell2net_attr.io.schema.RunIdentity` and the
shard's place). ``--resume`` keeps the contiguous chunks from row 0 on and computes the rest; the final
file is then assembled chunk by chunk by the ordinary writers and renamed into place.

:class:`KeyedParts` keeps the finished parts of an output that is not made of rows (a mutagenesis job's
peaks) the same way, one checksummed file per part; both share :class:`PartialDir`.

A job that also accumulates something over its rows (a summary's group sums) hands a :class:`ChunkSide`:
what it gathered over a chunk's rows is saved in that chunk (``side_<name>`` arrays), and a resumed run hands
back every kept chunk's. A job that keeps no rows (``keep_rows=False``: a summary without per-cell files)
saves chunks of side arrays alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import UserError
from .writers import os_error, plain_value

_CHUNK = re.compile(r"^chunk-(\d{12})-(\d{12})-([0-9a-f]{32})\.npz$")


def checksum(data: bytes) -> str:
    """The checksum a chunk's name carries (128 bits of sha256)."""
    return hashlib.sha256(data).hexdigest()[:32]


def partial_dir(out: Path) -> Path:
    """Hidden in-progress directory beside ``out``."""
    return out.with_name(f".{out.name}.partial")


class PartialDir:
    """The in-progress directory of one output: its run's identity (``meta.json``), kept for ``--resume``
    or discarded, and files saved in it atomically under names that carry their checksum."""

    def __init__(self, out: Path, identity: dict, resume: bool, warn: Callable[[str], None]) -> None:
        self.out, self.dir = out, partial_dir(out)
        self._warn = warn
        self.identity = {k: plain_value(v) for k, v in identity.items()}
        adopted = False
        if self.dir.exists():
            if resume:
                self._check_identity()
                adopted = True
            else:
                warn(f"discarding the partial output of an interrupted run in {self.dir} "
                     f"(use --resume to continue it instead)")
                shutil.rmtree(self.dir, ignore_errors=True)
        elif resume:
            warn(f"nothing to resume for {out}: starting from the beginning")
        self.dir.mkdir(exist_ok=True)
        (self.dir / "meta.json").write_text(json.dumps(self.identity, indent=1, sort_keys=True))
        self.resumed = adopted

    def _check_identity(self) -> None:
        """Refuse the directory of a run with another identity."""
        try:
            saved = json.loads((self.dir / "meta.json").read_text())
        except (OSError, ValueError):
            saved = None
        if saved != self.identity:
            keys = sorted(k for k in set(self.identity) | set(saved or {})
                          if (saved or {}).get(k) != self.identity.get(k))
            raise UserError(f"the partial output in {self.dir} is from a different run ({', '.join(keys[:4])} "
                            f"differ); use --overwrite to start over", self.out)

    def save_file(self, name: str, data: bytes) -> Path:
        """Write ``data`` as ``name`` in the directory: a temporary file, fsync'd, then renamed."""
        tmp = self.dir / f".{name}.{os.getpid()}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.dir / name)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise os_error(exc, self.out) from exc
        return self.dir / name

    def remove_temporaries(self) -> None:
        """Temporary files a killed process left behind."""
        for tmp in self.dir.glob(".*"):
            tmp.unlink(missing_ok=True)

    def discard(self) -> None:
        """Remove the in-progress directory."""
        shutil.rmtree(self.dir, ignore_errors=True)


SIDE = "side_"  # prefix of the side arrays in a chunk file


class ChunkSide(Protocol):
    """What a job gathers over its rows besides the rows themselves, saved with each chunk."""

    def take(self) -> dict[str, np.ndarray]:
        """What was gathered over the rows since the last call (they are being saved as one chunk)."""

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        """What a saved chunk holds, handed back by a resumed run (once per kept chunk, in row order)."""


class PartialRun(PartialDir):
    """Chunks of finished rows for one output, resumable across processes."""

    def __init__(self, out: Path, identity: dict, resume: bool, warn: Callable[[str], None],
                 chunk_rows: int | None = None, chunk_seconds: float = 10.0, side: ChunkSide | None = None,
                 keep_rows: bool = True) -> None:
        super().__init__(out, identity, resume, warn)
        self.side, self.keep_rows = side, keep_rows
        # a chunk is saved every chunk_rows rows or chunk_seconds, whichever comes first
        self.chunk_rows = chunk_rows or 16384
        self.chunk_seconds = chunk_seconds
        self._buf: list[tuple[int, np.ndarray, np.ndarray | None]] = []  # without keep_rows: (start, n, None)
        self._last = time.monotonic()
        self.rows_done = self._adopt() if self.resumed else 0

    def _adopt(self) -> int:
        """Rows already done by an earlier run with the same identity (its contiguous valid chunks)."""
        done, sides = 0, []
        for start, stop, path in self._chunk_files():
            if start != done:
                break
            data = path.read_bytes()
            if checksum(data) != _CHUNK.match(path.name).group(3):
                self._warn(f"{path} is damaged (its checksum does not match); recomputing from cell {start}")
                break
            if self.side is not None:
                with np.load(io.BytesIO(data)) as z:
                    sides.append({k[len(SIDE):]: z[k] for k in z.files if k.startswith(SIDE)})
            done = stop
        for arrays in sides:  # only once the prefix is known good
            if arrays:
                self.side.restore(arrays)
        for start, _, path in self._chunk_files():  # keep only the contiguous prefix
            if start >= done:
                path.unlink(missing_ok=True)
        self.remove_temporaries()
        return done

    def _chunk_files(self) -> list[tuple[int, int, Path]]:
        found = []
        for p in self.dir.iterdir():
            m = _CHUNK.match(p.name)
            if m:
                found.append((int(m.group(1)), int(m.group(2)), p))
        return sorted(found)

    def add(self, start: int, attr: np.ndarray, delta: np.ndarray | None) -> None:
        """Buffer finished rows ``start..start+len(attr)``; saves a chunk when it is big or old."""
        self._buf.append((start, attr, delta) if self.keep_rows else (start, len(attr), None))
        if self._buffered_rows() >= self.chunk_rows or time.monotonic() - self._last >= self.chunk_seconds:
            self.flush()

    def _buffered_rows(self) -> int:
        return sum(len(a) if self.keep_rows else a for _, a, _ in self._buf)

    def flush(self) -> None:
        """Save buffered rows (and the side's arrays) as one chunk file (atomically)."""
        if not self._buf:
            return
        start = self._buf[0][0]
        stop = start + self._buffered_rows()
        arrays = {}
        if self.keep_rows:
            _, attr, delta = self._buffered()
            arrays = {"attr": attr} if delta is None else {"attr": attr, "delta": delta}
        if self.side is not None:
            arrays.update({SIDE + k: v for k, v in self.side.take().items()})
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getvalue()
        self.save_file(f"chunk-{start:012d}-{stop:012d}-{checksum(data)}.npz", data)  # the name carries it
        self.rows_done = stop
        self._buf.clear()
        self._last = time.monotonic()

    def chunks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """Saved chunks in row order, one at a time (memory stays one chunk), then the rows still in
        memory: the output takes them directly, as saving them first would only be read back. They stay
        buffered until :meth:`discard`, so an interrupt while the output is written still saves them.
        Nothing without ``keep_rows``."""
        if not self.keep_rows:
            return
        for start, _, path in self._chunk_files():
            with np.load(path) as z:
                yield start, z["attr"], z["delta"] if "delta" in z.files else None
        if self._buf:
            yield self._buffered()

    def _buffered(self) -> tuple[int, np.ndarray, np.ndarray | None]:
        """The buffered rows as one block: first row, attributions, deltas (when every batch had them)."""
        deltas = [d for _, _, d in self._buf]
        return (self._buf[0][0], np.concatenate([a for _, a, _ in self._buf]),
                np.concatenate(deltas) if all(d is not None for d in deltas) else None)

    def discard(self) -> None:
        """Remove the in-progress directory and forget the rows in memory."""
        self._buf.clear()
        super().discard()


_KEYED = re.compile(r"^(\w+)-(\d{6})-([0-9a-f]{32})\.npz$")


class KeyedParts(PartialDir):
    """Finished parts of one output, one file of named arrays per integer key (a peak of a mutagenesis job),
    resumable across processes: a part is saved whole or not at all; a damaged one is computed again."""

    def __init__(self, out: Path, identity: dict, resume: bool, warn: Callable[[str], None],
                 prefix: str = "part") -> None:
        super().__init__(out, identity, resume, warn)
        self.prefix = prefix
        self.done: dict[int, dict[str, np.ndarray]] = self._adopt() if self.resumed else {}

    def _adopt(self) -> dict[int, dict[str, np.ndarray]]:
        done = {}
        for path in sorted(self.dir.iterdir()):
            m = _KEYED.match(path.name)
            if not m or m.group(1) != self.prefix:
                continue
            data = path.read_bytes()
            if checksum(data) != m.group(3):
                self._warn(f"{path} is damaged (its checksum does not match); computing it again")
                path.unlink(missing_ok=True)
                continue
            with np.load(io.BytesIO(data)) as z:
                done[int(m.group(2))] = {k: z[k] for k in z.files}
        self.remove_temporaries()
        return done

    def save(self, key: int, arrays: dict[str, np.ndarray]) -> None:
        """Save part ``key`` (atomically, checksummed) and keep it in memory."""
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getvalue()
        self.save_file(f"{self.prefix}-{key:06d}-{checksum(data)}.npz", data)
        self.done[key] = arrays

