"""Event logs for user behaviour analysis: `<run>/collect/events.parquet`, read column-wise.

Columns: user (a keyed pseudonym, pseudonyms.py), time (timestamp), event, item, category,
value (revenue), source, line (the row's place in its file, which orders ties and finds events
out of time order). Sources:

- `events`: CSV, TSV/TXT, Parquet and JSONL files (globs, folders; many files), any column
  names (`user_field`, `time_field`, `event_field`, `item_field`, `category_field`,
  `value_field`; item, category and value are optional; `extra_fields` keeps more columns,
  as text named x_<column>, for the task's `extra_columns` features). DuckDB reads and writes
  them in columns and streams, never one Python object per event. A time is an ISO date / date-time
  or seconds since the epoch; a row whose time is neither, or whose user or event is empty, is
  a bad row: counted, its first `file:line (value)`s kept, and past `max_bad_rows` the stage
  stops in one line (collect/rows.py's policy).
- `shop_simulator`: the built-in seeded shop (collect/shop_simulator.py); its ground truth
  (segments, latent rates) goes to `<run>/collect/truth.parquet`, users pseudonymised the same.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from modelworks.collect.rows import missing_column
from modelworks.collect.source import Paths, Source

SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "tsv",
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".json": "jsonl",
}
EXTRA_PREFIX = "x_"  # an `extra_fields` column in events.parquet: x_<name>, text
# an ISO date/date-time, else seconds since the epoch, else NULL (a bad row)
TIME_SQL = (
    "COALESCE(TRY_CAST(t_raw AS TIMESTAMP), "
    "make_timestamp(TRY_CAST(TRY_CAST(t_raw AS DOUBLE) * 1e6 AS BIGINT)))"
)


def expand(patterns: list[str], where: str) -> list[Path]:
    if not patterns:
        raise FileNotFoundError(f"{where}.paths: empty; give at least one file, glob or folder")
    found: list[Path] = []
    for pattern in patterns:
        hits = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
        for h in hits:
            found += sorted(f for f in h.rglob("*") if f.is_file()) if h.is_dir() else [h]
        if not hits:
            raise FileNotFoundError(f"{where}.paths: no file matches {pattern!r}")
    kept = [f for f in found if _kind(f)]
    if not kept:
        raise FileNotFoundError(
            f"{where}.paths: no csv/tsv/txt/parquet/jsonl file among {patterns}"
        )
    return kept


def _kind(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    return SUFFIXES.get(suffixes[-1]) if suffixes else None


def _reader(path: Path) -> tuple[str, int]:
    """(DuckDB table function reading the file, lines before its first row)."""
    p = str(path).replace("'", "''")
    kind = _kind(path)
    if kind == "csv":
        return f"read_csv('{p}', header=true, all_varchar=true, delim=',', quote='\"')", 1
    if kind == "tsv":
        return f"read_csv('{p}', header=true, all_varchar=true, delim='\t', quote='')", 1
    if kind == "parquet":
        return f"read_parquet('{p}')", 0
    return f"read_json('{p}', format='newline_delimited')", 0


def file_select(con, path: Path, src, where: str, index: int) -> str:
    """SELECT of one file's rows in the standard raw columns (t_raw still text)."""
    reader, header = _reader(path)
    names = [r[0] for r in con.sql(f"DESCRIBE SELECT * FROM {reader}").fetchall()]
    fields = {"user": src.user_field, "t_raw": src.time_field, "event": src.event_field}
    for key, col in fields.items():
        if col not in names:
            field = {"user": "user_field", "t_raw": "time_field", "event": "event_field"}[key]
            raise missing_column(path, col, f"{where}.{field}", names)
    optional = {"item": src.item_field, "category": src.category_field, "value": src.value_field}
    cols = [f'CAST("{c}" AS VARCHAR) AS {k}' for k, c in fields.items()]
    for key, col in optional.items():
        cols.append(
            f'CAST("{col}" AS VARCHAR) AS {key}'
            if col and col in names
            else f"CAST(NULL AS VARCHAR) AS {key}"
        )
    for col in getattr(src, "extra_fields", ()):
        if col not in names:
            raise missing_column(path, col, f"{where}.extra_fields", names)
        cols.append(f'CAST("{col}" AS VARCHAR) AS "{EXTRA_PREFIX}{col}"')
    p = str(path).replace("'", "''")
    return (
        f"SELECT {', '.join(cols)}, '{p}' AS file, {index} AS file_index, "
        f"row_number() OVER () + {header} AS line FROM {reader}"
    )


class EventsSource(Paths, Source):
    """User event logs from csv/tsv/parquet/jsonl files, read column-wise by DuckDB."""

    kind: ClassVar[str] = "events"
    type: Literal["events"] = "events"
    user_field: str = Field("user", description="column holding the user id")
    time_field: str = Field(
        "timestamp", description="column holding the time (ISO date/date-time or epoch seconds)"
    )
    event_field: str = Field("event", description="column holding the event name")
    item_field: str = Field("item", description="optional item column ('' = none)")
    category_field: str = Field("category", description="optional item category column ('' = none)")
    value_field: str = Field("value", description="optional revenue column ('' = none)")
    extra_fields: list[str] = Field(
        default_factory=list,
        description="more columns kept (as text, x_<name>) for tasks.user_behaviour.extra_columns",
    )
    max_bad_rows: float = Field(
        0.01,
        ge=0,
        description="rows with an unparseable time or an empty user or event are skipped and "
        "counted; the stage stops above this many (a fraction of the rows read when < 1)",
    )

    def read(self, where, problems, run_dir, bad):  # the events stage reads it (events_stage.py)
        raise NotImplementedError("event sources are collected column-wise by collect_events")


class ShopSimulatorSource(Source):
    """A seeded built-in shop's event log, with its ground truth (segments, true rates)."""

    kind: ClassVar[str] = "events"
    uses_run_seed: ClassVar[bool] = True
    type: Literal["shop_simulator"] = "shop_simulator"
    users: int = Field(20000, ge=10, description="how many users to simulate")
    max_bad_rows: float = Field(0.01, ge=0, description="(generated rows are never bad)")

    def read(self, where, problems, run_dir, bad):
        raise NotImplementedError("event sources are collected column-wise by collect_events")
