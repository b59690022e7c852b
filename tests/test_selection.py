"""``--idx`` parsing: a table of inputs and the rows they select."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from cell2net_attr.data.selection import read_tokens, resolve_idx, resolve_tokens
from cell2net_attr.errors import UserError

OBS = pd.Index([f"c{i}" for i in range(10)])
DIGIT_OBS = pd.Index([str(i) for i in range(10, 20)])  # names that look like positions

TABLE = [
    ("0,5,9", "auto", [0, 5, 9]),
    ("9,0,5", "auto", [9, 0, 5]),  # order kept
    ("-1", "auto", [9]),
    ("-3,-1", "auto", [7, 9]),
    ("0:3", "auto", [0, 1, 2]),
    ("7:", "auto", [7, 8, 9]),
    (":2", "auto", [0, 1]),
    ("-2:", "auto", [8, 9]),
    ("3:5,0", "auto", [3, 4, 0]),
    ("c3,c1", "auto", [3, 1]),
    ("c9", "name", [9]),
    ("2", "position", [2]),
    (" 1 , 2 ", "auto", [1, 2]),
]


@pytest.mark.parametrize("spec,kind,rows", TABLE)
def test_idx_table(spec, kind, rows):
    assert resolve_tokens(read_tokens(spec), OBS, kind).tolist() == rows


ERRORS = [
    ("", "empty"),
    ("1,,2", "empty token"),
    ("10", "out of range"),
    ("-11", "out of range"),
    ("0:11", "out of range"),
    ("c1,c99", "unknown obs name"),
    ("cc1", "did you mean"),
    ("1,1", "more than once"),
    ("0:3,2", "more than once"),
    ("c1,2", "mixes positions and names"),
    ("5:2", "empty"),
]


@pytest.mark.parametrize("spec,message", ERRORS)
def test_idx_errors(spec, message):
    with pytest.raises(UserError, match=message):
        resolve_tokens(read_tokens(spec) if spec else [], OBS)


def test_ambiguous_tokens_need_idx_type():
    obs = pd.Index([str(i) for i in range(5, 25)])  # 20 cells named 5..24
    with pytest.raises(UserError, match="idx-type"):
        resolve_tokens(["12"], obs)  # position 12 and name "12"
    assert resolve_tokens(["12"], obs, "name").tolist() == [7]
    assert resolve_tokens(["2"], obs, "position").tolist() == [2]
    assert resolve_tokens(["12"], DIGIT_OBS).tolist() == [2]  # no position 12 among 10 cells: the name


def test_idx_from_file_and_stdin(tmp_path):
    f = tmp_path / "cells.txt"
    f.write_text("c4\n\nc2\n  c7  \n")
    assert resolve_tokens(read_tokens(f"@{f}"), OBS).tolist() == [4, 2, 7]
    assert read_tokens("@-", stdin=io.StringIO("3\n1\n")) == ["3", "1"]
    with pytest.raises(UserError, match="cannot read index file"):
        read_tokens(f"@{tmp_path / 'absent.txt'}")


def test_long_list_from_file(tmp_path):
    obs = pd.Index([f"cell{i}" for i in range(50_000)])
    order = np.random.default_rng(0).permutation(50_000)
    f = tmp_path / "cells.txt"
    f.write_text("\n".join(obs[order]))
    assert np.array_equal(resolve_tokens(read_tokens(f"@{f}"), obs), order)


def test_api_idx_forms():
    assert resolve_idx(None, OBS).tolist() == list(range(10))
    assert resolve_idx([3, 1], OBS).tolist() == [3, 1]
    assert resolve_idx(np.array([3, 1]), OBS).tolist() == [3, 1]
    assert resolve_idx(["c2", "c0"], OBS).tolist() == [2, 0]
    assert resolve_idx("1:3", OBS).tolist() == [1, 2]
    mask = np.zeros(10, dtype=bool)
    mask[[2, 5]] = True
    assert resolve_idx(mask, OBS).tolist() == [2, 5]
    with pytest.raises(UserError):
        resolve_idx([1, "c2"], OBS)
    with pytest.raises(UserError):
        resolve_idx([], OBS)
