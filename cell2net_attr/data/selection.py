"""Turning ``--idx`` (or the API's ``idx``) into row positions.

Syntax: comma-separated tokens, each a position (``5``, ``-1`` from the end), a half-open
range (``0:100``, ``:10``, ``-5:``), or an obs name; ``@FILE`` reads one token per line
(``@-`` reads standard input). Rows come out in the order given. Duplicated cells are an
error: each output row must name one cell.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .._lists import is_list_file, read_list_file
from ..errors import UserError, suggest

_POSITION = re.compile(r"^-?\d+$")
_RANGE = re.compile(r"^(-?\d+)?:(-?\d+)?$")
IDX_TYPES = ("auto", "position", "name")
SHOW = 5


def read_tokens(spec: str, stdin=None) -> list[str]:
    """Split an ``--idx`` value into tokens, reading ``@FILE`` / ``@-``."""
    if is_list_file(spec):
        return read_list_file(spec, "index file", stdin)
    tokens = [t.strip() for t in spec.split(",")]
    if any(t == "" for t in tokens):
        raise UserError(f"empty token in '{spec[:80]}'", param="idx")
    return tokens


def _is_positional(token: str) -> bool:
    return bool(_POSITION.match(token) or _RANGE.match(token))


def resolve_tokens(tokens: Sequence[str], obs_names: pd.Index, idx_type: str = "auto") -> np.ndarray:
    """Resolve string tokens to positions, detecting positions vs names."""
    if idx_type not in IDX_TYPES:
        raise UserError(f"unknown idx type '{idx_type}', choose from {IDX_TYPES}", param="idx_type")
    if not tokens:
        raise UserError("the selection is empty", param="idx")
    if idx_type == "auto":
        positional = [_is_positional(t) for t in tokens]
        if all(positional):
            # a token is ambiguous only if it is a valid position *and* an obs name
            valid = _valid_positions(tokens, len(obs_names))
            clash = [t for t in tokens if t in obs_names and valid]
            if clash:
                raise UserError(f"token(s) {clash[:SHOW]} are both positions and obs names; "
                                f"say which with --idx-type position|name", param="idx")
            names = not valid and all(t in obs_names for t in tokens)
            idx_type = "name" if names else "position"
        elif not any(positional):
            idx_type = "name"
        else:
            names = [t for t, p in zip(tokens, positional) if not p]
            if all(t in obs_names for t in tokens):
                idx_type = "name"
            else:
                raise UserError(f"mixes positions and names (e.g. '{names[0]}'); use one kind, "
                                f"or --idx-type", param="idx")
    rows = _positions(tokens, len(obs_names)) if idx_type == "position" else _names(tokens, obs_names)
    return _check_unique(rows, obs_names)


def resolve_idx(idx, obs_names: pd.Index, idx_type: str = "auto") -> np.ndarray:
    """Positions for the API's ``idx``: ``None`` (all), ints, names, or a CLI-syntax string."""
    n = len(obs_names)
    if idx is None:
        return np.arange(n, dtype=np.int64)
    if isinstance(idx, str):
        return resolve_tokens(read_tokens(idx), obs_names, idx_type)
    items = list(np.asarray(idx).tolist()) if isinstance(idx, (np.ndarray, pd.Index)) else list(idx)
    if not items:
        raise UserError("the selection is empty", "idx")
    if all(isinstance(i, (bool, np.bool_)) for i in items):
        if len(items) != n:
            raise UserError(f"boolean mask has {len(items)} entries for {n} cells", "idx")
        return np.flatnonzero(np.asarray(items)).astype(np.int64)
    if all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in items):
        return _check_unique(_positions([str(int(i)) for i in items], n), obs_names)
    if all(isinstance(i, str) for i in items):
        return _check_unique(_names(items, obs_names), obs_names)
    raise UserError("idx must be all integers or all obs names", "idx")


def _valid_positions(tokens: Sequence[str], n: int) -> bool:
    """Whether every positional token is in range for ``n`` cells."""
    try:
        _positions(tokens, n)
    except UserError:
        return False
    return True


def _positions(tokens: Sequence[str], n: int) -> np.ndarray:
    out: list[np.ndarray] = []
    bad: list[str] = []
    for t in tokens:
        m = _RANGE.match(t)
        if m:
            start = int(m.group(1)) if m.group(1) else 0
            stop = int(m.group(2)) if m.group(2) else n
            for v in (start, stop):
                if not -n <= v <= n:
                    bad.append(t)
                    break
            else:
                out.append(np.arange(*slice(start, stop).indices(n), dtype=np.int64))
        elif _POSITION.match(t):
            v = int(t)
            if -n <= v < n:
                out.append(np.array([v % n], dtype=np.int64))
            else:
                bad.append(t)
        else:
            raise UserError(f"'{t}' is not a position or range", param="idx")
    if bad:
        more = f" and {len(bad) - SHOW} more" if len(bad) > SHOW else ""
        raise UserError(f"out of range for {n} cells: {', '.join(bad[:SHOW])}{more}", param="idx")
    rows = np.concatenate(out) if out else np.empty(0, dtype=np.int64)
    if rows.size == 0:
        raise UserError("the selection is empty", param="idx")
    return rows


def _names(tokens: Sequence[str], obs_names: pd.Index) -> np.ndarray:
    if not obs_names.is_unique:
        raise UserError("obs names are not unique; select cells by position", param="idx")
    pos = obs_names.get_indexer(list(tokens))
    if (pos < 0).any():
        unknown = [t for t, p in zip(tokens, pos) if p < 0]
        tip = suggest(unknown[0], obs_names) if len(obs_names) <= 20_000 else ""  # a hint, not a long scan
        more = f" and {len(unknown) - SHOW} more" if len(unknown) > SHOW else ""
        raise UserError(f"unknown obs name(s): {', '.join(unknown[:SHOW])}{more}{tip}", param="idx")
    return pos.astype(np.int64)


def _check_unique(rows: np.ndarray, obs_names: pd.Index) -> np.ndarray:
    uniq, counts = np.unique(rows, return_counts=True)
    if (counts > 1).any():
        dup = [str(obs_names[r]) for r in uniq[counts > 1]]
        raise UserError(f"cell(s) selected more than once: {', '.join(dup[:SHOW])}", param="idx")
    return rows
