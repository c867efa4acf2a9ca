"""The collect stage for event logs (user behaviour): `<run>/collect/events.parquet`, written
column-wise by DuckDB from the sources collect/events.py declares (+ `truth.parquet` for the
simulator)."""

from __future__ import annotations

from modelworks import pseudonyms
from modelworks.collect.events import EXTRA_PREFIX, TIME_SQL, expand, file_select
from modelworks.collect.rows import BadRows
from modelworks.errors import CollectError


def collect_events(cfg, reporter) -> dict:
    """The collect stage for event sources: events.parquet (+ truth.parquet for the simulator)."""
    import duckdb

    from modelworks.lifecycle import stage_writer
    from modelworks.tasks import stage_options

    if any(s.kind != "events" for s in cfg.collect.sources):
        raise CollectError(
            "collect.sources mixes event logs with other kinds; use one kind per run"
        )
    key, key_from = pseudonyms.key()
    writer = stage_writer(cfg, "collect", stage_options(cfg, "collect"))
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
        # sources with different extra_fields: BY NAME fills the columns one lacks with NULL
        con.execute(
            "CREATE VIEW raw AS " + " UNION ALL BY NAME ".join(f"({p})" for p in parts)
        ).fetchall()
        kept = [f for s in cfg.collect.sources for f in getattr(s, "extra_fields", ())]
        extras = "".join(f', "{EXTRA_PREFIX}{f}"' for f in dict.fromkeys(kept))
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
            f"TRY_CAST(value AS DOUBLE) AS value, file AS source, line{extras} FROM parsed "
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
