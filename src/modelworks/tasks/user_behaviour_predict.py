"""`modelworks predict RUN --data events.parquet`: score every user of an event log with a trained
user-behaviour run, in batches, to Parquet (user, propensity, segment, top items, the events that
weighed most), the same scoring as `POST /v1/users/score` (tasks/user_behaviour_serve.py).

The log is read column-wise by DuckDB (csv, tsv, parquet, jsonl; the column names of the run's
own `events` source, else user/timestamp/event/item/category/value) in user order, one user's
events at a time; each user is scored as of `at` (default: the log's last event). The output
keeps the log's own user ids (it is the caller's file, written outside the run) and is written
to a temporary file renamed into place when complete.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from modelworks.errors import BehaviourDataError


def _fields(run_cfg) -> dict[str, str]:
    """The run's own event-source column names (its first `events` source), else defaults."""
    src = next((s for s in run_cfg.collect.sources if s.type == "events"), None)
    names = {"user": "user", "time": "timestamp", "event": "event", "item": "item",
             "category": "category", "value": "value"}  # fmt: skip
    if src is not None:
        names.update(user=src.user_field, time=src.time_field, event=src.event_field)
        names.update(item=src.item_field, category=src.category_field, value=src.value_field)
    return names


def predict(
    run_dir: str | Path,
    data: str | Path,
    out: str | Path,
    reporter=None,
    at: datetime | None = None,
    device: str = "cpu",
    batch: int = 512,
) -> dict:
    """Score every user of `data` into `out` (Parquet); returns {users, events, out, at}."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    from modelworks.collect.events import EXTRA_PREFIX, TIME_SQL, expand, file_select
    from modelworks.lifecycle import load_run
    from modelworks.progress import Reporter
    from modelworks.runtime import resolve_device
    from modelworks.tasks.user_behaviour_serve import (
        Event,
        load_state,
        request_extra,
        request_features,
        score_user,
        stored_options,
        tokens,
    )

    reporter = reporter or Reporter()
    run_dir, out = Path(run_dir), Path(out)
    run_cfg = load_run(run_dir)
    if run_cfg.task != "user_behaviour":
        raise BehaviourDataError(
            f"{run_dir}: task {run_cfg.task!r}; predict scores user_behaviour runs"
        )
    opt = stored_options(run_dir)
    st = load_state(run_dir, resolve_device(device))
    names = _fields(run_cfg)
    xcols = [c["name"] for c in (st["extra_spec"] or {}).get("columns", [])]

    class _Src:  # file_select's view of a source: the column names
        user_field, time_field, event_field = names["user"], names["time"], names["event"]
        item_field, category_field, value_field = names["item"], names["category"], names["value"]
        extra_fields = xcols

    con = duckdb.connect()
    files = expand([str(data)], "--data")
    union = " UNION ALL ".join(f"({file_select(con, f, _Src, '--data', 0)})" for f in files)
    con.execute(f"CREATE VIEW parsed AS SELECT *, {TIME_SQL} AS time FROM ({union})").fetchall()
    good = "time IS NOT NULL AND coalesce(user, '') <> '' AND coalesce(event, '') <> ''"
    n_events, n_users, last = con.sql(
        f"SELECT count(*), count(DISTINCT user), max(time) FROM parsed WHERE {good}"
    ).fetchall()[0]
    if not n_events:
        raise BehaviourDataError(f"--data {data}: no event with a time, a user and an event name")
    at = at or last.replace(tzinfo=timezone.utc)
    reader = con.sql(
        "SELECT user, time, event, item, category, TRY_CAST(value AS DOUBLE) AS value"
        + "".join(f', "{EXTRA_PREFIX}{c}"' for c in xcols)
        + f" FROM parsed WHERE {good} ORDER BY user, time, file_index, line"
    ).arrow()
    tmp = out.with_name(f".{out.name}.tmp")
    strings = pa.list_(pa.string())
    schema = pa.schema([("user", pa.string()), ("propensity", pa.float64()),
                        ("segment", pa.int64()), ("top_items", strings),
                        ("weighed_most", pa.string()), ("warnings", strings)])  # fmt: skip
    rows: list[dict] = []
    user, events = None, []
    reporter.start(n_users, "[predict] users", unit="user")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with pq.ParquetWriter(tmp, schema) as writer:

            def flush_user() -> None:
                x, kept, warnings = tokens(events, st["vocab"], opt.token_field, at,
                                           st["model"].cfg.max_len)  # fmt: skip
                feats = request_features(events, opt.target_event, at)
                seen = {e.item for e in kept if e.item}
                ex = request_extra(st, kept, x.shape[1])
                r = score_user(st, x, feats, seen, opt.top_k, opt.token_field, ex)
                rows.append({
                    "user": user, "propensity": float(r["propensity"]), "segment": r["segment"],
                    "top_items": [i["item"] for i in r["items"]],
                    "weighed_most": json.dumps([w.model_dump() for w in r["why"]]),
                    "warnings": warnings,
                })  # fmt: skip
                if len(rows) >= batch:
                    writer.write_table(pa.Table.from_pylist(rows, schema))
                    reporter.update(len(rows))
                    rows.clear()

            for record_batch in _batches(reader):
                for rec in record_batch.to_pylist():
                    if rec["user"] != user and events:
                        flush_user()
                        events = []
                    user = rec["user"]
                    if rec["time"] <= at.replace(tzinfo=None):
                        events.append(Event(time=rec["time"], event=rec["event"],
                                            item=rec["item"], category=rec["category"],
                                            value=rec["value"], **{c: rec[EXTRA_PREFIX + c]
                                            for c in xcols}))  # fmt: skip
            if events:
                flush_user()
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema))
                reporter.update(len(rows))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        reporter.close()
        con.close()
    scored = pq.ParquetFile(out).metadata.num_rows
    reporter.info(f"[predict] {scored} users, {n_events} events, as of {at.isoformat()} -> {out}")
    return {"users": scored, "events": n_events, "out": str(out), "at": at.isoformat()}


def _batches(reader):
    """Arrow record batches of a DuckDB result (a reader in DuckDB 2, a table before)."""
    if hasattr(reader, "read_next_batch"):
        yield from reader
    else:
        yield from reader.to_batches()
