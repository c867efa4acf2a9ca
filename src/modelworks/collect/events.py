"""Event logs for user behaviour analysis: `<run>/collect/events.parquet`, read column-wise.

Columns: user (a keyed pseudonym, pseudonyms.py), time (timestamp), event, item, category,
value (revenue), source, line (the row's place in its file, which orders ties and finds events
out of time order). Sources:

- `events`: CSV, TSV/TXT, Parquet and JSONL files (globs, folders; many files), any column
  names (`user_field`, `time_field`, `event_field`, `item_field`, `category_field`,
  `value_field`; item, category and value are optional). DuckDB reads and writes them in
  columns and streams, never one Python object per event. A time is an ISO date / date-time
  or seconds since the epoch; a row whose time is neither, or whose user or event is empty, is
  a bad row: counted, its first `file:line (value)`s kept, and past `max_bad_rows` the stage
  stops in one line (collect/rows.py's policy).
- `shop_simulator`: the built-in seeded shop (collect/shop_simulator.py); its ground truth
  (segments, latent rates) goes to `<run>/collect/truth.parquet`, users pseudonymised the same.
"""

from __future__ import annotations

import glob
from pathlib import Path

from modelworks import pseudonyms
from modelworks.collect.rows import BadRows, missing_column
from modelworks.errors import CollectError

EVENT_TYPES = {"events", "shop_simulator"}
SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "tsv",
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".json": "jsonl",
}
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
    p = str(path).replace("'", "''")
    return (
        f"SELECT {', '.join(cols)}, '{p}' AS file, {index} AS file_index, "
        f"row_number() OVER () + {header} AS line FROM {reader}"
    )


def collect_events(cfg, reporter) -> dict:
    """The collect stage for event sources: events.parquet (+ truth.parquet for the simulator)."""
    import duckdb

    from modelworks.lifecycle import stage_writer

    if any(s.type not in EVENT_TYPES for s in cfg.collect.sources):
        raise CollectError(
            "collect.sources mixes event logs with other kinds; use one kind per run"
        )
    key, key_from = pseudonyms.key()
    writer = stage_writer(cfg, "collect")
    writer.open()
    con = duckdb.connect()
    con.execute(f"SET threads = {max(1, cfg.threads or 1)}").fetchall()
    parts, counts, bad_rows = [], {}, {}
    try:
        for i, src in enumerate(cfg.collect.sources):
            where = f"collect.sources.{i}"
            if src.type == "shop_simulator":
                from modelworks.collect.shop_simulator import simulate

                events, truth = simulate(src.users, cfg.seed)
                con.register(f"sim{i}", events)
                con.register(f"truth{i}", truth)
                con.execute(
                    f"COPY (SELECT * REPLACE ({pseudonyms.sql('user')} AS user) FROM truth{i}) "
                    f"TO '{writer.dir / 'truth.parquet'}' (FORMAT parquet)",
                    {"key": key},
                ).fetchall()
                parts.append(
                    f"SELECT user, CAST(time AS VARCHAR) AS t_raw, event, item, category, "
                    "CAST(value AS VARCHAR) AS value, 'shop_simulator' AS file, "
                    f"{i} AS file_index, "
                    f"row_number() OVER () AS line FROM sim{i}"
                )
                continue
            selects = [file_select(con, f, src, where, i) for f in expand(src.paths, where)]
            parts.append(" UNION ALL ".join(selects))
        con.execute("CREATE VIEW raw AS " + " UNION ALL ".join(f"({p})" for p in parts)).fetchall()
        con.execute(f"CREATE VIEW parsed AS SELECT *, {TIME_SQL} AS time FROM raw").fetchall()
        for i, src in enumerate(cfg.collect.sources):
            where = f"collect.sources.{i}"
            bad = _bad_rows(con, i, where, src.max_bad_rows)
            counts[where] = bad.rows - bad.bad
            if bad.bad:
                bad_rows[where] = bad.summary()
                reporter.info(f"[collect] {where}: skipped {bad.bad} bad row(s): {bad.describe()}")
            try:
                bad.check()
            except ValueError as e:
                raise CollectError(str(e)) from None
        out = writer.dir / "events.parquet"
        con.execute(
            f"COPY (SELECT {pseudonyms.sql('user')} AS user, time, event, item, category, "
            "TRY_CAST(value AS DOUBLE) AS value, file AS source, line FROM parsed "
            f"WHERE {_GOOD}) TO '{out}' (FORMAT parquet, ROW_GROUP_SIZE 1000000)",
            {"key": key},
        ).fetchall()
        total, users = con.sql(f"SELECT count(*), count(DISTINCT user) FROM '{out}'").fetchall()[0]
        if total == 0:
            raise CollectError(
                "collect: the event sources yielded no events; check collect.sources"
            )
    except BaseException:
        writer.discard()
        raise
    finally:
        con.close()
    writer.summary = {
        "events": total,
        "users": users,
        "per_source": counts,
        "pseudonym_key": key_from,
    }
    if bad_rows:
        writer.summary["bad_rows"] = bad_rows
    reporter.info(f"[collect] {total} events of {users} users (user ids: keyed pseudonyms)")
    return writer.commit()


_GOOD = "time IS NOT NULL AND coalesce(user, '') <> '' AND coalesce(event, '') <> ''"


def _bad_rows(con, index: int, where: str, max_bad: float) -> BadRows:
    bad = BadRows(where, max_bad)
    bad.rows = con.sql(f"SELECT count(*) FROM raw WHERE file_index = {index}").fetchall()[0][0]
    reasons = {
        "unparseable time": "time IS NULL",
        "empty user": "coalesce(user, '') = ''",
        "empty event": "coalesce(event, '') = ''",
    }
    for reason, cond in reasons.items():
        rows = con.sql(
            f"SELECT file, line, t_raw, count(*) OVER () FROM parsed "
            f"WHERE file_index = {index} AND {cond} ORDER BY file, line LIMIT 5"
        ).fetchall()
        if rows:
            bad.counts[reason] = int(rows[0][3])
            bad.first[reason] = [
                f"{f}:{line}" + (f" (time {t!r})" if reason == "unparseable time" else "")
                for f, line, t, _ in rows
            ]
    return bad
