"""Interaction logs for recommendation: (user, item, timestamp[, rating]) rows.

Sources yield dicts with `user`, `item`, `timestamp` (a float that orders a user's items),
`rating` (float or None) and `source`:

- `interactions`: CSV or Parquet files with a user, an item and a time column (names set by
  `user_field`, `item_field`, `time_field`; `time_field: ''` orders by row). Times may be numbers,
  dates or ISO date-times (as seconds since the epoch). A missing column is a one-line error
  naming the file and the column.
- `stdlib_calls` (the built-in default, every install has it): the Python standard library's
  functions as users and the names they call as items. See `stdlib_calls`.
- `stdlib_imports`: the stdlib's modules as users and the top-level modules they import as
  items; smaller (about 700 users, 270 items, 3,500 imports on Python 3.11).

Both stdlib sources read the source files with `ast`, never importing them, and skip the same
folders as `python_docs` (tests, demos, site-packages). They vary slightly with the Python version.
"""

from __future__ import annotations

import ast
import glob
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from modelworks.collect.sources import _SKIP_DIRS


def stdlib_files() -> Iterator[tuple[str, ast.Module]]:
    """(dotted module name, parsed tree) for every stdlib .py file, in path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP_DIRS.intersection(rel.parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):  # the stdlib ships a few deliberate bad files
            continue
        yield ".".join(rel.with_suffix("").parts), tree


def _source() -> str:
    return f"python{sys.version_info[0]}.{sys.version_info[1]} stdlib"


def stdlib_calls() -> Iterator[dict]:
    """One user per function or method of the stdlib, one interaction per call in its body.

    user = `module:Qualified.name:line` (the line keeps same-named redefinitions apart);
    item = the called name: `f` for `f(...)`, the last attribute for `a.b.f(...)`; calls whose
    callee is itself an expression (`f()()`, `x[0]()`) are left out. timestamp = the call's rank
    in source order within the function body: by where the call starts (line, column), then by
    where it ends, so in `g(x).f()` the inner `g` comes before `f`, as it runs. Nested functions
    and classes are users of their own; their calls do not count in the enclosing function. Repeated
    calls of the same name stay here; preprocessing keeps each (user, item) pair's first call.
    """
    source = _source()
    for module, tree in stdlib_files():
        for user, names in function_calls(module, tree):
            for t, name in enumerate(names):
                yield {"user": user, "item": name, "timestamp": float(t), "rating": None,
                       "source": source}  # fmt: skip


def function_calls(module: str, tree: ast.Module) -> Iterator[tuple[str, list[str]]]:
    """(user id, called names in the order described in `stdlib_calls`) per function."""
    for qualname, func in _functions(tree):
        calls = []
        for node in _body_nodes(func):
            if isinstance(node, ast.Call):
                name = _called_name(node.func)
                if name:
                    end = (node.end_lineno or 0, node.end_col_offset or 0)
                    calls.append((node.lineno, node.col_offset, *end, name))
        calls.sort()
        yield f"{module}:{qualname}:{func.lineno}", [c[-1] for c in calls]


def stdlib_imports() -> Iterator[dict]:
    """One user per stdlib module, one interaction per `import` in file order.

    item = the imported top-level module (`os` for `import os.path` and `from os import path`);
    relative imports (`from . import x`) are left out. timestamp = the import's rank in the file.
    """
    source = _source()
    for module, tree in stdlib_files():
        nodes = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
        nodes.sort(key=lambda n: (n.lineno, n.col_offset))
        names = []
        for n in nodes:
            if isinstance(n, ast.Import):
                names.extend(a.name.split(".")[0] for a in n.names)
            elif n.level == 0 and n.module:
                names.append(n.module.split(".")[0])
        for t, name in enumerate(names):
            yield {"user": module, "item": name, "timestamp": float(t), "rating": None,
                   "source": source}  # fmt: skip


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def _functions(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    stack: list[tuple[ast.AST, str]] = [(tree, "")]
    while stack:
        node, prefix = stack.pop()
        children = []
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                qual = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    yield qual, child
                children.append((child, qual + "."))
            elif not isinstance(child, ast.Lambda):
                children.append((child, prefix))
        stack.extend(reversed(children))


def _body_nodes(func: ast.AST) -> Iterator[ast.AST]:
    """Every node inside the function, not descending into nested functions or classes."""
    stack = [c for c in ast.iter_child_nodes(func)]
    while stack:
        node = stack.pop()
        if isinstance(node, _SCOPES[:3]):
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


# ---------------------------------------------------------------------------------------------
# Files

TABLE_SUFFIXES = (".csv", ".parquet")


def read_interactions(
    patterns: list[str],
    user_field: str,
    item_field: str,
    time_field: str,
    rating_field: str,
    where: str,
) -> Iterator[dict]:
    """Rows of CSV/Parquet interaction logs; see the module docstring."""
    if not patterns:
        raise FileNotFoundError(f"{where}.paths: empty; give at least one csv or parquet file")
    for pattern in patterns:
        hits = sorted(p for p in map(Path, glob.glob(pattern, recursive=True)) if p.is_file())
        if not hits:
            raise FileNotFoundError(f"{where}.paths: no file matches {pattern!r}")
        for path in hits:
            yield from _read_file(path, user_field, item_field, time_field, rating_field, where)


def _read_file(
    path: Path, user_field: str, item_field: str, time_field: str, rating_field: str, where: str
) -> Iterator[dict]:
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(path)
        elif suffix == ".csv":
            df = pd.read_csv(path, dtype={user_field: str, item_field: str}, keep_default_na=False)
        else:
            raise ValueError(
                f"{path}: unsupported file type {suffix!r} (interactions: csv, parquet)"
            )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read ({str(e).splitlines()[0]})") from None
    wanted = [("user_field", user_field), ("item_field", item_field)]
    if time_field:
        wanted.append(("time_field", time_field))
    for key, column in wanted:
        if column not in df.columns:
            have = ", ".join(map(str, df.columns)) or "none"
            raise ValueError(
                f"{path}: no column {column!r} ({where}.{key}); the file has columns: {have}"
            )
    for key, column in (("user_field", user_field), ("item_field", item_field)):
        values = df[column]
        empty = values.isna() | (values.astype(str).str.strip() == "")
        if empty.any():
            row = int(empty.to_numpy().argmax()) + (2 if suffix == ".csv" else 1)
            raise ValueError(f"{path} row {row}: empty {column!r} ({where}.{key})")
    times = _times(df[time_field], path, time_field) if time_field else range(len(df))
    ratings = None
    if rating_field and rating_field in df.columns:
        ratings = pd.to_numeric(df[rating_field], errors="coerce")
    source = str(path)
    users, items = df[user_field].astype(str), df[item_field].astype(str)
    for i, (u, it, t) in enumerate(zip(users, items, times, strict=True)):
        r = None if ratings is None or pd.isna(ratings.iat[i]) else float(ratings.iat[i])
        yield {"user": u, "item": it, "timestamp": float(t), "rating": r, "source": source}


def _times(col, path: Path, column: str):
    """Numbers as they are; dates and date-times as seconds since the epoch."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        values = col.astype(float)
    elif pd.api.types.is_datetime64_any_dtype(col):
        values = (col - pd.Timestamp(0, tz=col.dt.tz)) / pd.Timedelta(seconds=1)
    else:
        values = pd.to_numeric(col, errors="coerce")
        if values.isna().any():
            try:
                stamps = pd.to_datetime(col, utc=True, format="ISO8601")
            except (ValueError, TypeError):
                stamps = None
            if stamps is None or stamps.isna().any():
                bad = col[values.isna()].iloc[0]
                raise ValueError(
                    f"{path}: column {column!r} has {bad!r}, neither a number nor a date"
                )
            values = (stamps - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    if values.isna().any():
        row = int(values.isna().to_numpy().argmax()) + 1
        raise ValueError(f"{path}: column {column!r} is empty at data row {row}")
    return values.to_numpy()
