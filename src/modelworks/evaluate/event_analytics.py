"""The weekly figures of an event log `e(user, time, event, item, category, value)`: sessions,
an ordered funnel, weekly retention cohorts (one read of the log), an RFM table (SQL).

One query reads the log once, as DuckDB SQL grouped by user: per user, one sorted list of
BIGINT keys `(epoch_us(time) - first Monday) << bits | step code` (the user string and the event
name are read once, never materialised again). What follows is one linear NumPy pass over those
sorted arrays: a new session where the gap to the user's previous event exceeds the inactivity
gap, each funnel step as "the earliest event of step k at or after step k-1's time" (in the same
session, or within N days of the user's first step), each user's distinct weeks for the cohorts.
SQL says the same with a lag window, a running sum in a second window (two sorts of the whole
log) and self-joins: ~5x slower at 10M events, 2.6x even on integer keys (benchmarks/RESULTS.md).
The answers are the same: a test checks them against that SQL.

Every figure is a sum over users, so the same step runs on one partition of users per worker
(the Ray executor's unit) and the partial counts add up; nothing here holds one Python object
per event. `analytics(con, ...)` returns plain JSON-able figures; `plots` draws them.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

WEEKS = 12  # retention columns shown
WEEK_US = 7 * 86400 * 10**6
NEVER = np.iinfo(np.int64).max  # "this step not reached": no time is >= it


def _sorted_events(con, steps: list[str], gap_minutes: float, funnel_days: float):
    """(t, code, offsets, constants): every event's time in microseconds since the Monday of the
    log's first week and its step code (1 + index of its name among the distinct step names,
    0 for other events), sorted by time within each user; user u's events are
    offsets[u]:offsets[u + 1]. The gap and window in microseconds come from DuckDB's own
    interval parsing, as the SQL compared them before."""
    names = list(dict.fromkeys(steps))
    bits = len(names).bit_length()  # the code in the key's low bits: shifts, not division
    code = "CASE event " + " ".join(f"WHEN $s{k} THEN {k + 1}" for k in range(len(names)))
    monday, span, gap, window = con.execute(
        f"""SELECT epoch_us(date_trunc('week', min(time))),
            epoch_us(max(time)) - epoch_us(date_trunc('week', min(time))),
            epoch_us(TIMESTAMP '1970-01-01' + INTERVAL '{float(gap_minutes) * 60} seconds'),
            epoch_us(TIMESTAMP '1970-01-01' + INTERVAL '{float(funnel_days) * 86400} seconds')
            FROM e"""
    ).fetchall()[0]
    if monday is None:  # an empty log
        return np.zeros(0, np.int64), np.zeros(0, np.uint8), np.zeros(1, np.int64), (0, gap, 0)
    if span >= 2 ** (63 - bits):
        from modelworks.errors import EvaluateError

        raise EvaluateError(
            f"event analytics: the log spans {span / 3.15576e13:.0f} years, "
            f"too long to key in microseconds with {len(names)} funnel steps"
        )
    # list_sort after list(): one small sort per user (cheaper than an ordered aggregate)
    col = (
        con.sql(
            f"SELECT list_sort(list(((epoch_us(time) - {monday}) << {bits}) "
            f"+ ({code} ELSE 0 END))) AS k FROM e GROUP BY user",
            params={f"s{k}": s for k, s in enumerate(names)},
        )
        .to_arrow_table()
        .column("k")
        .combine_chunks()
    )
    flat = col.flatten()
    if flat.null_count:
        from modelworks.errors import EvaluateError

        raise EvaluateError(f"event analytics: {flat.null_count} events have no time")
    keys = _numpy(flat)
    offsets = _numpy(col.offsets).astype(np.int64)
    offsets -= offsets[0]
    c = (keys & ((1 << bits) - 1)).astype(np.uint8)
    return keys >> bits, c, offsets, (monday, gap, window)


def _numpy(arr) -> np.ndarray:
    """A read-only NumPy view of an Arrow integer array without nulls (pyarrow's to_numpy
    imports pandas: ~0.3 s and ~50 MB this step does not need)."""
    dtype = np.dtype(str(arr.type))
    return np.frombuffer(arr.buffers()[1], dtype, len(arr), arr.offset * dtype.itemsize)


def _funnel(t, at, group, n_groups, window=None) -> list[int]:
    """Keys (a session or a user: `group`, nondecreasing along the sorted events) reaching each
    step: step 0 at a key's earliest step-0 event, step k at its earliest step-k event at or after
    step k-1's time (and, with `window`, at most `window` after step 0's time). at[k]: the
    positions of step k's events."""
    prev = np.full(n_groups, NEVER, np.int64)  # time a key reached the previous step
    limit = prev.copy()
    counts = []
    for k, idx in enumerate(at):
        g = group[idx]
        if k:
            ok = t[idx] >= prev[g]
            if window is not None:
                ok &= t[idx] <= limit[g]
            idx, g = idx[ok], g[ok]
        first = np.ones(len(g), bool)  # sorted by time within a key: the first is the earliest
        np.not_equal(g[1:], g[:-1], out=first[1:])
        idx, g = idx[first], g[first]
        prev[:] = NEVER
        prev[g] = t[idx]
        if k == 0 and window is not None:
            limit[g] = t[idx] + window
        counts.append(len(g))
    return counts


def analytics(con, steps: list[str], gap_minutes: float, funnel_days: float, cutoff) -> dict:
    """Sessions, funnel (in a session; within `funnel_days` of a user's first step), weekly
    retention cohorts and RFM summary as of `cutoff`, from table `e`."""
    t, c, offsets, (monday, gap, window) = _sorted_events(con, steps, gap_minutes, funnel_days)
    n_users, n = len(offsets) - 1, len(t)
    heads = offsets[:-1]  # each user's first event
    new = np.empty(n, bool)  # a session starts here
    np.greater(t[1:] - t[:-1], gap, out=new[1:])
    new[heads] = True
    sid = np.cumsum(new, dtype=np.int32)  # session number (from 1), over all users
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], n)[: len(starts)] - 1  # before the next start (empty log: none)
    minutes = (t[ends] - t[starts]) / 1e6 / 60
    del new, ends
    uid = np.repeat(np.arange(n_users, dtype=np.int32), np.diff(offsets))
    codes = {s: k + 1 for k, s in enumerate(dict.fromkeys(steps))}
    where = {code: np.flatnonzero(c == code) for code in codes.values()}
    at = [where[codes[s]] for s in steps]
    del c
    funnel = {}
    for name, counts in (
        ("session", _funnel(t, at, sid, len(starts) + 1)),
        (f"{funnel_days:g}_days", _funnel(t, at, uid, n_users, window)),
    ):
        funnel[name] = [
            {
                "step": s,
                "count": int(k),
                "of_first": k / counts[0] if counts[0] else 0.0,
                "of_previous": k / counts[i - 1] if i and counts[i - 1] else 1.0,
            }
            for i, (s, k) in enumerate(zip(steps, counts, strict=True))
        ]
    del sid, at, where
    # retention: each user's distinct weeks (weeks counted from `monday`, the log's first Monday)
    week = t // WEEK_US
    active = np.empty(n, bool)
    np.not_equal(week[1:], week[:-1], out=active[1:])
    active[heads] = True
    active = np.flatnonzero(active)
    cohort = week[heads][uid[active]]
    k = week[active] - cohort
    keep = k < WEEKS
    grid = np.bincount(cohort[keep] * WEEKS + k[keep]).astype(np.int64)
    grid = np.pad(grid, (0, -len(grid) % WEEKS)).reshape(-1, WEEKS)
    retention = {}
    for w in np.flatnonzero(grid[:, 0]):
        day = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=int(monday + w * WEEK_US))
        size = int(grid[w, 0])
        retention[day.strftime("%Y-%m-%d")] = {
            "users": size,
            "active_share": [round(int(v) / size, 4) for v in grid[w]],
        }
    n_sess = len(starts)
    return {
        "sessions": {
            "count": n_sess,
            "per_user": round(n_sess / n_users, 3) if n_users else 0.0,
            "events_per_session": round(n / n_sess, 3) if n_sess else 0.0,
            "median_minutes": round(float(np.median(minutes)), 2) if n_sess else 0.0,
            "gap_minutes": gap_minutes,
        },
        "funnel": funnel,
        "retention_weekly": retention,
        "rfm": rfm_summary(con, steps[-1], cutoff),
    }


def rfm_sql(target: str, cutoff_param: str = "$cutoff") -> str:
    """Per user as of the cutoff: recency (days since last event), frequency (target events),
    monetary (their value), tenure (days since first event), events; and RFM quantile scores
    (1-3 each; r: 3 = most recent)."""
    return f"""
        WITH b AS (SELECT * FROM e WHERE time < {cutoff_param}),
        f AS (SELECT user,
            epoch({cutoff_param} - max(time)) / 86400 AS recency,
            count(*) FILTER (WHERE event = $target) AS frequency,
            coalesce(sum(value) FILTER (WHERE event = $target), 0) AS monetary,
            epoch({cutoff_param} - min(time)) / 86400 AS tenure,
            count(*) AS events
            FROM b GROUP BY user)
        SELECT *, ntile(3) OVER (ORDER BY recency DESC) AS r,
            ntile(3) OVER (ORDER BY frequency) AS f, ntile(3) OVER (ORDER BY monetary) AS m
        FROM f ORDER BY user"""


def rfm_summary(con, target: str, cutoff) -> dict:
    rows = con.execute(
        f"SELECT r, f, count(*), avg(recency), avg(frequency), avg(monetary) FROM "
        f"({rfm_sql(target)}) GROUP BY r, f ORDER BY r DESC, f DESC",
        {"target": target, "cutoff": cutoff},
    ).fetchall()
    return {
        f"R{r}F{f}": {
            "users": n,
            "recency_days": round(rc, 2),
            "frequency": round(fq, 3),
            "monetary": round(m, 2),
        }
        for r, f, n, rc, fq, m in rows
    }


def plots(figures: dict, out: Path) -> list[tuple[str, str]]:
    """Funnel bars and the cohort heatmap as PNGs in `out`: [(file, caption)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from modelworks.evaluate.report import save_png

    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = list(figures["funnel"])
    steps = [s["step"] for s in figures["funnel"][names[0]]]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        share = [s["of_first"] for s in figures["funnel"][name]]
        ax.bar(np.arange(len(steps)) + i * width, share, width, label=name.replace("_", " "))
    ax.set_xticks(np.arange(len(steps)) + width * (len(names) - 1) / 2, steps)
    ax.set_ylabel("share of the first step")
    ax.legend()
    fig.tight_layout()
    save_png(fig, out / "funnel.png")
    ret = figures["retention_weekly"]
    grid = np.array([ret[c]["active_share"] for c in ret])
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(ret) + 1.2))
    im = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=0, vmax=1)
    ax.set_yticks(range(len(ret)), list(ret), fontsize=7)
    ax.set_xlabel("weeks since first event")
    fig.colorbar(im, ax=ax, label="share active")
    fig.tight_layout()
    save_png(fig, out / "cohorts.png")
    return [
        ("funnel.png", "Funnel (share of the first step)"),
        ("cohorts.png", "Weekly retention cohorts"),
    ]
