"""evaluate/event_analytics.py against the plain SQL it replaced (two window sorts and
self-joins, kept here as the reference): the same sessions, funnels and cohorts on random logs
with ties, gaps exactly at the limit, events outside the funnel and a repeated step name."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from modelworks.errors import EvaluateError
from modelworks.evaluate.event_analytics import WEEKS, analytics


def _reference(con, steps, gap_minutes, funnel_days) -> dict:
    con.execute(f"""CREATE OR REPLACE TEMP TABLE es AS
        SELECT *, sum(new) OVER (PARTITION BY user ORDER BY time, line) AS sid FROM (
            SELECT *, CASE WHEN lag(time) OVER (PARTITION BY user ORDER BY time, line) IS NULL
                OR time - lag(time) OVER (PARTITION BY user ORDER BY time, line)
                   > INTERVAL '{float(gap_minutes) * 60} seconds' THEN 1 ELSE 0 END AS new
            FROM e)""").fetchall()  # fmt: skip
    n, per_user, events_per, minutes = con.sql(
        "SELECT count(*), count(*) / count(DISTINCT user), avg(n), median(d) FROM ("
        "SELECT user, sid, count(*) AS n, epoch(max(time) - min(time)) / 60 AS d "
        "FROM es GROUP BY user, sid)"
    ).fetchall()[0]
    out = {"sessions": [n, round(per_user, 3), round(events_per, 3), round(minutes, 2)]}
    params = {f"s{k}": s for k, s in enumerate(steps)}
    days = f"{float(funnel_days) * 86400} seconds"
    for name, key, window in (("session", "user, sid", None), ("days", "user", days)):
        cols = [c.strip() for c in key.split(",")]
        on = " AND ".join(f"s.{c} = f.{c}" for c in cols)
        fcols = ", ".join("f." + c for c in cols)
        ctes = [f"f0 AS (SELECT {key}, min(time) AS t, min(time) AS t0 FROM es "
                f"WHERE event = $s0 GROUP BY {key})"]  # fmt: skip
        for k in range(1, len(steps)):
            limit = f" AND s.time <= f.t0 + INTERVAL '{window}'" if window else ""
            ctes.append(f"f{k} AS (SELECT {fcols}, min(s.time) AS t, any_value(f.t0) AS t0 "
                        f"FROM f{k - 1} f JOIN es s ON {on} AND s.event = $s{k} "
                        f"AND s.time >= f.t{limit} GROUP BY {fcols})")  # fmt: skip
        counts = ", ".join(f"(SELECT count(*) FROM f{k})" for k in range(len(steps)))
        out[name] = list(
            con.execute("WITH " + ", ".join(ctes) + f" SELECT {counts}", params).fetchall()[0]
        )
    rows = con.sql(f"""WITH u AS (SELECT user, date_trunc('week', min(time)) AS cohort
              FROM e GROUP BY user),
        a AS (SELECT DISTINCT e.user, u.cohort,
              date_diff('week', u.cohort, date_trunc('week', e.time)) AS k
              FROM e JOIN u USING (user))
        SELECT strftime(cohort, '%Y-%m-%d'), k, count(*) FROM a WHERE k < {WEEKS}
        GROUP BY ALL ORDER BY 1, 2""").fetchall()  # fmt: skip
    out["cohorts"] = {}
    for cohort, k, n in rows:
        out["cohorts"].setdefault(cohort, [0] * WEEKS)[k] = n
    return out


def _ours(con, steps, gap_minutes, funnel_days) -> dict:
    a = analytics(con, steps, gap_minutes, funnel_days, None)
    sizes = {c: v["users"] for c, v in a["retention_weekly"].items()}
    return {
        "sessions": [
            a["sessions"][k] for k in ("count", "per_user", "events_per_session", "median_minutes")
        ],
        "session": [s["count"] for s in a["funnel"]["session"]],
        "days": [s["count"] for s in a["funnel"][f"{funnel_days:g}_days"]],
        "cohorts": {
            c: [round(x * sizes[c]) for x in v["active_share"]]
            for c, v in a["retention_weekly"].items()
        },
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "steps", [["view", "cart", "purchase"], ["view", "cart", "view", "purchase"], ["cart"]]
)
def test_the_same_figures_as_the_window_and_join_sql(seed, steps):
    rng = np.random.default_rng(seed)
    n = 4000
    start = np.datetime64("2026-03-04T05:06:07", "us")  # a Wednesday: cohorts cut mid-week
    # minute-grained times: many exact ties and gaps of exactly 30 minutes
    minutes = np.sort(rng.integers(0, 60 * 24 * 90, n)) if seed else rng.integers(0, 400, n)
    times = (
        start + minutes.astype("timedelta64[m]") + rng.integers(0, 2, n) * np.timedelta64(1, "us")
    )
    log = pa.table({
        "user": [f"u{u}" for u in rng.integers(0, 60, n)], "time": times,
        "event": rng.choice(["view", "cart", "purchase", "search"], n),
        "value": rng.random(n), "line": np.arange(n),
    })  # fmt: skip
    con = duckdb.connect()
    con.register("log", log)
    con.execute("CREATE TABLE e AS SELECT * FROM log").fetchall()
    assert _ours(con, steps, 30, 7) == _reference(con, steps, 30, 7)
    assert _ours(con, steps, 0.5, 0.25) == _reference(con, steps, 0.5, 0.25)
    assert _ours(con, steps, 1, 2**-5) == _reference(con, steps, 1, 2**-5)  # 45 minutes


def test_an_empty_log_gives_zeros_and_an_event_without_a_time_is_named():
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE e (user VARCHAR, time TIMESTAMP, event VARCHAR, value DOUBLE)"
    ).fetchall()
    a = analytics(con, ["view", "cart"], 30, 7, None)
    assert a["sessions"]["count"] == 0 and a["retention_weekly"] == {}
    assert [s["count"] for s in a["funnel"]["session"]] == [0, 0]
    con.execute(
        "INSERT INTO e VALUES ('a', '2026-01-05 10:00', 'view', 1), ('a', NULL, 'cart', 1)"
    ).fetchall()
    with pytest.raises(EvaluateError, match="1 events have no time"):
        analytics(con, ["view", "cart"], 30, 7, None)
