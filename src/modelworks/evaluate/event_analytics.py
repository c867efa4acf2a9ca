"""The weekly figures of an event log, as SQL (DuckDB) over a table `e(user, time, event, item,
category, value)`: sessions, an ordered funnel, weekly retention cohorts, an RFM table.

Every query groups by user first, so the same SQL runs on one partition of users per worker
(the Ray executor's unit) and the partial counts add up; nothing here holds one Python object
per event. `analytics(con, ...)` returns plain JSON-able figures; `plots` draws them.
"""

from __future__ import annotations

from pathlib import Path

WEEKS = 12  # retention columns shown


def sessions_sql(gap_minutes: float) -> str:
    """e + `sid`: a user's session number (a new one after `gap_minutes` of inactivity)."""
    return f"""
        SELECT *, sum(new) OVER (PARTITION BY user ORDER BY time, line) AS sid FROM (
            SELECT *, CASE WHEN lag(time) OVER (PARTITION BY user ORDER BY time, line) IS NULL
                OR time - lag(time) OVER (PARTITION BY user ORDER BY time, line)
                   > INTERVAL '{float(gap_minutes) * 60} seconds' THEN 1 ELSE 0 END AS new
            FROM e)"""


def funnel_sql(steps: list[str], key: str, window: str | None) -> str:
    """Counts of keys reaching each step in order (step k after step k-1), one row.
    key: 'user, sid' (within a session) or 'user' (from the first step, within `window`)."""
    cols = [c.strip() for c in key.split(",")]
    on = " AND ".join(f"s.{c} = f.{c}" for c in cols)
    ctes = [
        f"f0 AS (SELECT {key}, min(time) AS t, min(time) AS t0 FROM es "
        f"WHERE event = $s0 GROUP BY {key})"
    ]
    for k in range(1, len(steps)):
        limit = f" AND s.time <= f.t0 + INTERVAL '{window}'" if window else ""
        ctes.append(
            f"f{k} AS (SELECT {', '.join('f.' + c for c in cols)}, min(s.time) AS t, "
            f"any_value(f.t0) AS t0 FROM f{k - 1} f JOIN es s ON {on} AND s.event = $s{k} "
            f"AND s.time >= f.t{limit} GROUP BY {', '.join('f.' + c for c in cols)})"
        )
    counts = ", ".join(f"(SELECT count(*) FROM f{k})" for k in range(len(steps)))
    return "WITH " + ", ".join(ctes) + f" SELECT {counts}"


def analytics(con, steps: list[str], gap_minutes: float, funnel_days: float, cutoff) -> dict:
    """Sessions, funnel (in a session; within `funnel_days` of a user's first step), weekly
    retention cohorts and RFM summary as of `cutoff`, from table `e`."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE es AS {sessions_sql(gap_minutes)}").fetchall()
    n_sess, per_user, events_per, minutes = con.sql(
        "SELECT count(*), count(*) / count(DISTINCT user), avg(n), median(d) FROM ("
        "SELECT user, sid, count(*) AS n, epoch(max(time) - min(time)) / 60 AS d "
        "FROM es GROUP BY user, sid)"
    ).fetchall()[0]
    params = {f"s{k}": s for k, s in enumerate(steps)}
    funnel = {}
    for name, key, window in (
        ("session", "user, sid", None),
        (f"{funnel_days:g}_days", "user", f"{float(funnel_days) * 86400} seconds"),
    ):
        counts = con.execute(funnel_sql(steps, key, window), params).fetchall()[0]
        funnel[name] = [
            {
                "step": s,
                "count": int(n),
                "of_first": n / counts[0] if counts[0] else 0.0,
                "of_previous": n / counts[k - 1] if k and counts[k - 1] else 1.0,
            }
            for k, (s, n) in enumerate(zip(steps, counts, strict=True))
        ]
    rows = con.sql(
        f"""WITH u AS (SELECT user, date_trunc('week', min(time)) AS cohort FROM e GROUP BY user),
        a AS (SELECT DISTINCT e.user, u.cohort,
              date_diff('week', u.cohort, date_trunc('week', e.time)) AS k
              FROM e JOIN u USING (user))
        SELECT strftime(cohort, '%Y-%m-%d'), k, count(*) FROM a WHERE k < {WEEKS}
        GROUP BY ALL ORDER BY 1, 2"""
    ).fetchall()
    cohorts: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    for cohort, k, n in rows:
        if k == 0:
            sizes[cohort] = n
        cohorts.setdefault(cohort, [0.0] * WEEKS)[k] = n
    retention = {
        c: {"users": sizes[c], "active_share": [round(v / sizes[c], 4) for v in ws]}
        for c, ws in cohorts.items()
        if sizes.get(c)
    }
    return {
        "sessions": {
            "count": int(n_sess),
            "per_user": round(float(per_user), 3),
            "events_per_session": round(float(events_per), 3),
            "median_minutes": round(float(minutes), 2),
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
