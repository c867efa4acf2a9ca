"""Interaction logs for recommendation: (user, item, timestamp[, rating]) rows.

Sources yield dicts with `user`, `item`, `timestamp` (a float that orders a user's items),
`rating` (float or None) and `source`:

- `interactions`: CSV, TSV or Parquet files with a user, an item and a time column (names set
  by `user_field`, `item_field`, `time_field`; `time_field: ''` orders by row; `columns` names
  the columns of a file without a header, such as MovieLens' u.data). Times may be numbers, or
  dates and ISO 8601 date-times (as seconds since the epoch), not both in one file. A missing
  column is a one-line error naming the file, the column and the columns it has; a row with an
  empty user or item or a time that is neither is a bad row (collect/rows.py: skipped, counted,
  and past `max_bad_rows` the stage stops).
- `stdlib_calls` (the built-in default, every install has it): the Python standard library's
  functions as users and the names they call as items. See `stdlib_calls`.
- `stdlib_imports`: the stdlib's modules as users and the top-level modules they import as
  items; smaller (about 700 users, 270 items, 3,500 imports on Python 3.11).

Both stdlib sources read the source files with `ast`, never importing them, and skip the same
folders as `python_docs` (tests, demos, site-packages). They vary slightly with the Python version.
"""

from __future__ import annotations

import ast
import datetime as dt
import glob
import math
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from modelworks.collect.rows import BadRows, delimited, missing_column
from modelworks.collect.source import Columns, Paths, RowPolicy, Source
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

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet")


def read_interactions(
    patterns: list[str],
    user_field: str,
    item_field: str,
    time_field: str,
    rating_field: str,
    where: str,
    columns: list[str] | None = None,
    quoting: str = "auto",
    bad: BadRows | None = None,
) -> Iterator[dict]:
    """Rows of CSV/TSV/Parquet interaction logs; see the module docstring. `bad` collects
    skipped rows (without one, the default `max_bad_rows` is checked when the files are read)."""
    own = bad is None
    bad = BadRows(where) if bad is None else bad
    if not patterns:
        raise FileNotFoundError(f"{where}.paths: empty; give at least one csv, tsv or parquet file")
    fields = {"user_field": user_field, "item_field": item_field}
    if time_field:
        fields["time_field"] = time_field
    for pattern in patterns:
        hits = sorted(p for p in map(Path, glob.glob(pattern, recursive=True)) if p.is_file())
        if not hits:
            raise FileNotFoundError(f"{where}.paths: no file matches {pattern!r}")
        for path in hits:
            rows = _file_rows(path, fields, where, columns or [], quoting, bad)
            yield from _records(path, rows, fields, rating_field, bad)
    if own:
        bad.check()


def _file_rows(path: Path, fields: dict[str, str], where: str, columns: list[str], quoting: str,
               bad: BadRows) -> list[tuple[int, dict]]:  # fmt: skip
    """(line or row number, record) for every readable row, after the columns are checked."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise ValueError(f"{path}: cannot read ({str(e).splitlines()[0]})") from None
        names, rows = table.column_names, enumerate(table.to_pylist(), 1)
    elif suffix in (".csv", ".tsv", ".txt"):
        try:
            with open(path, encoding="utf-8-sig", newline="") as f:
                names, it = delimited(f, path, columns, quoting, bad)
                _check(path, names, fields, where)
                return list(it)
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not UTF-8 text") from None
    else:
        raise ValueError(
            f"{path}: unsupported file type {suffix!r} (interactions: csv, tsv, txt, parquet)"
        )
    _check(path, names, fields, where)
    return list(rows)


def _check(path: Path, names: list[str], fields: dict[str, str], where: str) -> None:
    for key, column in fields.items():
        if column not in names:
            raise missing_column(path, column, f"{where}.{key}", names)


def _records(path: Path, rows: list[tuple[int, dict]], fields: dict[str, str], rating_field: str,
             bad: BadRows) -> Iterator[dict]:  # fmt: skip
    """The interactions of one file; bad rows skipped, and a time column that mixes epoch
    numbers with dates refused (their orders cannot be compared with confidence)."""
    time_field = fields.get("time_field")
    out, kinds = [], {}
    for i, (line, row) in enumerate(rows):
        user, item = _text(row.get(fields["user_field"])), _text(row.get(fields["item_field"]))
        if not user:
            bad.skip(path, line, "empty user", f"column {fields['user_field']!r}")
            continue
        if not item:
            bad.skip(path, line, "empty item", f"column {fields['item_field']!r}")
            continue
        if time_field:
            value = row.get(time_field)
            t, kind = _time(value)
            if t is None:
                reason = "empty time" if kind == "empty" else "time neither a number nor a date"
                bad.skip(path, line, reason, f"{value!r} in column {time_field!r}")
                continue
            kinds.setdefault(kind, (line, value))
        else:
            t = float(i)
        bad.ok()
        out.append({"user": user, "item": item, "timestamp": t,
                    "rating": _rating(row.get(rating_field)), "source": str(path)})  # fmt: skip
    if len(kinds) == 2:
        (ln, num), (ld, date) = kinds["number"], kinds["date"]
        raise ValueError(
            f"{path}: column {time_field!r} mixes epoch numbers (line {ln}: {num!r}) and dates "
            f"(line {ld}: {date!r}); write every time one way"
        )
    yield from out


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def _rating(value) -> float | None:
    try:
        r = float(value)
    except (TypeError, ValueError):
        return None
    return r if math.isfinite(r) else None


def _time(value) -> tuple[float | None, str]:
    """(seconds, 'number' | 'date'): numbers as they are; dates and ISO 8601 date-times as
    seconds since the epoch (UTC when they carry no zone). (None, why) when it is neither."""
    if isinstance(value, bool):
        return None, "bad"
    if isinstance(value, int | float):
        return (float(value), "number") if math.isfinite(value) else (None, "empty")
    if isinstance(value, dt.datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
        return stamp.timestamp(), "date"
    if isinstance(value, dt.date):
        return _time(dt.datetime(value.year, value.month, value.day))
    text = _text(value)
    if not text:
        return None, "empty"
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return (number, "number") if math.isfinite(number) else (None, "bad")
    try:
        return _time(dt.datetime.fromisoformat(text))
    except ValueError:
        return None, "bad"


class InteractionsSource(Paths, Columns, RowPolicy, Source):
    """User/item logs from csv/tsv/parquet files."""

    kind: ClassVar[str] = "interactions"
    type: Literal["interactions"] = "interactions"
    user_field: str = Field("user", description="column holding the user id")
    item_field: str = Field("item", description="column holding the item id")
    time_field: str = Field(
        "timestamp", description="column ordering each user's items; '' = row order"
    )
    rating_field: str = Field("rating", description="optional rating column (kept when present)")

    def read(self, where, problems, run_dir, bad):
        return read_interactions(
            self.paths,
            self.user_field,
            self.item_field,
            self.time_field,
            self.rating_field,
            where,
            self.columns,
            self.quoting,
            bad,
        )


class StdlibCallsSource(Source):
    """Built-in data: the stdlib's functions as users, the names they call as items."""

    kind: ClassVar[str] = "interactions"
    type: Literal["stdlib_calls"] = "stdlib_calls"

    def read(self, where, problems, run_dir, bad):
        return stdlib_calls()


class StdlibImportsSource(Source):
    """Built-in data: the stdlib's modules as users, the modules they import as items."""

    kind: ClassVar[str] = "interactions"
    type: Literal["stdlib_imports"] = "stdlib_imports"

    def read(self, where, problems, run_dir, bad):
        return stdlib_imports()
