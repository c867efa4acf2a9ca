"""Extra event-log columns as features (`tasks.user_behaviour.extra_columns`).

The events source keeps them (`collect.sources.N.extra_fields`, as text columns x_<name> of
events.parquet). Each becomes one id per event, embedded and added to the event's token
embedding (models/behaviour.py `extra_emb`):
- numeric (every non-empty value parses as a number): `extra_buckets - 1` quantile buckets;
- otherwise categorical: the `extra_buckets - 2` most frequent values, the rest share one bucket;
- an empty value: bucket 0 (its own embedding).
Buckets are fitted on the events before the train window's cutoff (nothing from a label window)
and stored in `<run>/preprocess/extra.json`, so that serving and `modelworks predict` map a new
event's values the same way. Ids: column c, bucket b -> 1 + c * extra_buckets + b; 0 = no event
(padding and the cutoff token).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from modelworks.collect.events import EXTRA_PREFIX
from modelworks.errors import BehaviourDataError


def fit_spec(con, columns: list[str], buckets: int, cut) -> dict:
    """The bucketing of each extra column, from the events in table `e` before `cut`."""
    have = [r[0] for r in con.sql("DESCRIBE e").fetchall()]
    spec = []
    for name in columns:
        col = EXTRA_PREFIX + name
        if col not in have:
            present = [c[len(EXTRA_PREFIX) :] for c in have if c.startswith(EXTRA_PREFIX)]
            raise BehaviourDataError(
                f"tasks.user_behaviour.extra_columns: {name!r} is not in the event log (its extra "
                f"columns: {present or 'none'}); keep it with collect.sources.N.extra_fields"
            )
        q = f"SELECT \"{col}\" AS v FROM e WHERE time < $cut AND coalesce(\"{col}\", '') <> ''"
        params = {"cut": cut.item()}
        n, numeric = con.execute(
            f"SELECT count(*), count(TRY_CAST(v AS DOUBLE)) FROM ({q})", params
        ).fetchall()[0]
        if n and numeric == n:
            qs = [i / (buckets - 1) for i in range(1, buckets - 1)]
            edges = con.execute(
                f"SELECT quantile_cont(CAST(v AS DOUBLE), {qs}) FROM ({q})", params
            ).fetchall()[0][0]
            spec.append({"name": name, "kind": "numeric", "edges": sorted(set(edges))})
        else:
            rows = con.execute(
                f"SELECT v FROM ({q}) GROUP BY v ORDER BY count(*) DESC, v LIMIT {buckets - 2}",
                params,
            ).fetchall()
            spec.append({"name": name, "kind": "categorical", "values": [r[0] for r in rows]})
    return {"buckets": buckets, "columns": spec}


def ids(values: dict[str, np.ndarray], spec: dict) -> np.ndarray:
    """(events, columns) ids from each column's raw text values (None = empty)."""
    b = spec["buckets"]
    out = []
    for c, col in enumerate(spec["columns"]):
        v = np.asarray(values[col["name"]], dtype=object)
        empty = np.array([x is None or x == "" for x in v], bool)
        if col["kind"] == "numeric":
            num = np.array(
                [np.nan if e else _float(x) for x, e in zip(v, empty, strict=True)], np.float64
            )
            bucket = 1 + np.searchsorted(np.array(col["edges"], np.float64), num, side="right")
            bucket = np.where(np.isnan(num), 0, bucket)
        else:
            index = {x: i + 2 for i, x in enumerate(col["values"])}
            bucket = np.array(
                [0 if e else index.get(x, 1) for x, e in zip(v, empty, strict=True)], np.int64
            )
        out.append(1 + c * b + bucket)
    return np.stack(out, 1).astype(np.int64) if out else np.zeros((len(values), 0), np.int64)


def _float(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return np.nan


def events_ids(events, spec: dict, width: int) -> np.ndarray:
    """(1, width, columns) ids of a request's kept events (their extra fields by column name),
    0 after them (the cutoff token)."""
    cols = [c["name"] for c in spec["columns"]]
    raw = {n: [_text((getattr(e, "model_extra", None) or {}).get(n)) for e in events] for n in cols}
    out = np.zeros((1, width, len(cols)), np.int64)
    if events:
        out[0, : len(events)] = ids(raw, spec)
    return out


def _text(x) -> str | None:
    return None if x is None else str(x)


def load_spec(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "preprocess" / "extra.json"
    return json.loads(path.read_text()) if path.is_file() else None
