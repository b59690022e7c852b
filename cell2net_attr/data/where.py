"""``--where EXPR``: cells whose ``obs`` row satisfies a comparison of columns, as in ``DataFrame.query``.

The expression is parsed, checked and evaluated here, never handed to ``eval``: only column names,
literals (numbers, strings, booleans, lists of them), comparisons (``== != < <= > >= in not in``),
``and``/``or``/``not`` (and ``& | ~``) and parentheses are allowed. No ``@`` variables, calls,
attributes or indexing: a bad expression or an unknown column is one clear error.
"""

from __future__ import annotations

import ast
import io
import operator
import tokenize

import numpy as np
import pandas as pd

from ..errors import UserError, suggest

_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge}


def where_mask(store, expr: str, n_cells: int) -> np.ndarray:
    """Boolean mask over the global ``obs`` of the cells satisfying ``expr``."""
    tree = _parse(expr)
    columns = sorted({node.id for node in ast.walk(tree) if isinstance(node, ast.Name)})
    present = store.columns("obs")
    for name in columns:
        if name not in present:
            raise UserError(f"obs has no column {name!r}{suggest(name, present)}", param="where")
    obs = pd.DataFrame({name: _column(store, name) for name in columns}, index=pd.RangeIndex(n_cells))
    try:
        result = _eval(tree.body, obs)
    except TypeError as exc:  # e.g. '<' on an unordered category, or a number against text
        raise UserError(f"cannot evaluate {expr!r} ({exc})", param="where") from exc
    if not isinstance(result, pd.Series) or result.shape != (n_cells,) or not pd.api.types.is_bool_dtype(result):
        raise UserError(f"{expr!r} is not a condition on each cell", param="where")
    return np.asarray(_as_bool(result), dtype=bool)


def describe_columns(store, expr: str, limit: int = 12) -> str:
    """What the columns of ``expr`` hold, for a condition that matched no cell: the values of a categorical,
    text or boolean column (the closest to a misspelt literal suggested), the range of a numeric one."""
    tree = _parse(expr)
    names = sorted({node.id for node in ast.walk(tree) if isinstance(node, ast.Name)})
    literals = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    parts = []
    for name in names:
        col = _column(store, name)
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            parts.append(f"{name} ranges from {col.min():g} to {col.max():g}")
            continue
        values = [str(v) for v in (col.cat.categories if isinstance(col.dtype, pd.CategoricalDtype)
                                   else sorted(col.dropna().astype(str).unique()))]
        more = f" and {len(values) - limit} more" if len(values) > limit else ""
        hint = next((h for lit in literals if lit not in values and (h := suggest(lit, values))), "")
        parts.append(f"{name} holds {', '.join(map(repr, values[:limit]))}{more}{hint}")
    return "; ".join(parts)


def _column(store, name: str) -> pd.Series:
    values = store.column("obs", name)
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    return series.reset_index(drop=True)


def _parse(expr: str) -> ast.Expression:
    if "@" in expr:
        raise UserError("'@' variables are not allowed: compare columns with literal values", param="where")
    try:
        tree = ast.parse(_pandas_precedence(expr.strip()), mode="eval")
    except SyntaxError as exc:
        raise UserError(f"cannot parse {expr!r} ({exc.msg})", param="where") from exc
    for node in ast.walk(tree):  # & | ~ are and/or/not by now (_pandas_precedence): any BinOp is arithmetic
        if isinstance(node, ast.BinOp):
            raise UserError(f"arithmetic is not allowed in {expr!r}", param="where")
        if not isinstance(node, (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub,
                                 ast.Compare, ast.Name, ast.Load, ast.Constant, ast.List, ast.Tuple, ast.In,
                                 ast.NotIn, *_COMPARE)):
            raise UserError(f"{type(node).__name__.lower()} is not allowed in {expr!r}: only columns, literals, "
                            f"comparisons, and/or/not", param="where")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and not isinstance(node.operand,
                                                                                               ast.Constant):
            raise UserError(f"'-' applies only to numbers in {expr!r}", param="where")
    return tree


def _pandas_precedence(expr: str) -> str:
    """``&``, ``|`` and ``~`` as pandas reads them in ``query``: below the comparisons (as and/or/not)."""
    words = {"&": "and", "|": "or", "~": "not"}
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(expr).readline))
    except (tokenize.TokenError, SyntaxError) as exc:
        raise UserError(f"cannot parse {expr!r} ({exc})", param="where") from exc
    out = [(tokenize.NAME, words[t.string]) if t.type == tokenize.OP and t.string in words else (t.type, t.string)
           for t in tokens]
    return tokenize.untokenize(out).strip()


def _eval(node: ast.AST, obs: pd.DataFrame):
    if isinstance(node, ast.Name):
        return obs[node.id]
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_eval(e, obs) for e in node.elts]
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, obs)
        if isinstance(node.op, ast.USub):
            return -value
        return ~_as_bool(value)
    if isinstance(node, ast.BoolOp):
        parts = [_as_bool(_eval(v, obs)) for v in node.values]
        combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
        out = parts[0]
        for p in parts[1:]:
            out = combine(out, p)
        return out
    if isinstance(node, ast.Compare):
        left, out = _eval(node.left, obs), None
        for op, right_node in zip(node.ops, node.comparators):
            right = _eval(right_node, obs)
            part = _compare(op, left, right)
            out = part if out is None else out & part
            left = right
        return out
    raise TypeError(f"unsupported {type(node).__name__}")


def _compare(op: ast.cmpop, left, right):
    if isinstance(op, (ast.In, ast.NotIn)):
        if not isinstance(right, list):
            raise TypeError("'in' needs a list, e.g. celltype in ['B', 'NK']")
        if not isinstance(left, pd.Series):
            raise TypeError("'in' needs a column on its left")
        inside = left.isin(right)
        return inside if isinstance(op, ast.In) else ~inside
    if not isinstance(left, pd.Series) and not isinstance(right, pd.Series):
        raise TypeError("a comparison needs a column")
    return _as_bool(_COMPARE[type(op)](left, right))


def _as_bool(value) -> pd.Series:
    if not isinstance(value, pd.Series) or not pd.api.types.is_bool_dtype(value):
        raise TypeError("and/or/not combine conditions on columns")
    return value.fillna(False).astype(bool)
