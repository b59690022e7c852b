"""One-hot encoding of peak sequences (A, C, G, T columns; N is all zero)."""

from __future__ import annotations

import numpy as np

from ..errors import UserError

_TABLE = np.full((256, 4), np.nan, dtype=np.float32)
for _i, _base in enumerate("ACGT"):
    _TABLE[ord(_base)] = np.eye(4, dtype=np.float32)[_i]
    _TABLE[ord(_base.lower())] = np.eye(4, dtype=np.float32)[_i]
_TABLE[ord("N")] = 0.0
_TABLE[ord("n")] = 0.0


def one_hot(seq: str, name: str, length: int, source: str) -> np.ndarray:
    """Encode one sequence as (length, 4) float32.

    Lower case is accepted (soft-masked genomes), as upstream upper-cases first.
    Any other letter, or a length other than ``length``, is a :class:`UserError`
    naming the peak.
    """
    if not isinstance(seq, str):
        raise UserError(f"sequence of peak '{name}' is {type(seq).__name__}, not text", source)
    if len(seq) != length:
        raise UserError(f"sequence of peak '{name}' has length {len(seq)}, the checkpoint expects {length}", source)
    try:
        codes = np.frombuffer(seq.encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError as exc:
        raise UserError(f"sequence of peak '{name}' has non-ASCII letters (allowed: ACGTN)", source) from exc
    encoded = _TABLE[codes]
    bad = np.isnan(encoded[:, 0])
    if bad.any():
        letters = sorted(set(seq[i] for i in np.flatnonzero(bad)[:50]))
        raise UserError(f"sequence of peak '{name}' has letters {letters} outside ACGTN "
                        f"(first at position {int(np.argmax(bad))})", source)
    return encoded


def one_hot_all(seqs: list[str], names: list[str], length: int, source: str) -> np.ndarray:
    """Encode every peak of a gene: (P, length, 4) float32, as :func:`one_hot` encodes each, in one lookup.

    A sequence :func:`one_hot` would refuse is refused by it, with its message (the first such peak)."""
    malformed = next((i for i, s in enumerate(seqs) if not isinstance(s, str) or len(s) != length
                      or not s.isascii()), None)
    if malformed is not None:  # the first peak one_hot refuses, as the peaks are checked in order
        for s, n in zip(seqs[: malformed + 1], names):
            one_hot(s, n, length, source)
    codes = np.frombuffer("".join(seqs).encode("ascii"), dtype=np.uint8).reshape(len(seqs), length)
    encoded = _TABLE[codes]  # (P, length, 4)
    bad = np.isnan(encoded[..., 0]).any(axis=1)
    if bad.any():
        p = int(np.argmax(bad))
        one_hot(seqs[p], names[p], length, source)  # raises, naming the letters
    return encoded
