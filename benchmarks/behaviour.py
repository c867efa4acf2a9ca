"""Event analytics at scale: sessions + funnel + weekly retention over N simulated events, the
task's code (evaluate/event_analytics.py: a DuckDB read grouped by user, then NumPy over each
user's sorted events) against a plain pandas groupby implementation.

    python benchmarks/behaviour.py --users 20000          # ~1M events
    python benchmarks/behaviour.py --users 200000         # ~10M events (the issue's size)

The shop simulator writes one Parquet log; each side then runs in its own fresh process (so its
peak RSS is its own) reading that file, computing the same three figures, and the two answers
are checked equal (session count, funnel counts, cohort sizes). Sides alternate over `--repeats`;
the ratio is pandas time / DuckDB time per pair. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = ["view", "cart", "purchase"]


def duckdb_side(path: str, threads: int) -> dict:
    import duckdb

    analytics = _analytics_module().analytics
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}").fetchall()
    con.execute(f"CREATE VIEW e AS SELECT * FROM '{path}'").fetchall()  # has `line` already
    a = analytics(con, STEPS, 30, 7, None)
    return {
        "sessions": a["sessions"]["count"],
        "funnel_session": [s["count"] for s in a["funnel"]["session"]],
        "funnel_7_days": [s["count"] for s in a["funnel"]["7_days"]],
        "cohorts": {c: v["users"] for c, v in a["retention_weekly"].items()},
    }


def _analytics_module():
    """evaluate/event_analytics.py loaded alone: the package's __init__ would import torch,
    which is no part of the SQL and would count in this side's memory."""
    import importlib.util

    name = "event_analytics_alone"
    if name not in sys.modules:
        path = Path(__file__).parents[1] / "src/modelworks/evaluate/event_analytics.py"
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def pandas_side(path: str) -> dict:
    """The same figures the way a notebook would: sort, diff, cumsum, groupby, merge."""
    import numpy as np
    import pandas as pd

    df = pd.read_parquet(path, columns=["user", "time", "event"])
    df = df.sort_values(["user", "time"], kind="stable").reset_index(drop=True)
    gap = df.groupby("user")["time"].diff()
    df["sid"] = (gap.isna() | (gap > pd.Timedelta(minutes=30))).astype(np.int64)
    df["sid"] = df.groupby("user")["sid"].cumsum()
    sessions = int(df.groupby(["user", "sid"]).ngroups)

    def funnel(keys: list[str], window: pd.Timedelta | None) -> list[int]:
        cur = df[df.event == STEPS[0]].groupby(keys, as_index=False)["time"].min()
        cur["t0"] = cur["time"]
        counts = [len(cur)]
        for step in STEPS[1:]:
            nxt = df[df.event == step].merge(cur, on=keys, suffixes=("", "_prev"))
            ok = nxt["time"] >= nxt["time_prev"]
            if window is not None:
                ok &= nxt["time"] <= nxt["t0"] + window
            cur = (
                nxt[ok].groupby(keys, as_index=False).agg(time=("time", "min"), t0=("t0", "first"))
            )
            counts.append(len(cur))
        return counts

    first = df.groupby("user")["time"].transform("min")
    cohort = first.dt.to_period("W-SUN").dt.start_time
    week = df["time"].dt.to_period("W-SUN").dt.start_time
    k = ((week - cohort).dt.days // 7).astype(int)
    active = pd.DataFrame({"user": df.user, "cohort": cohort, "k": k}).drop_duplicates()
    sizes = active[active.k == 0].groupby("cohort")["user"].nunique()
    return {
        "sessions": sessions,
        "funnel_session": funnel(["user", "sid"], None),
        "funnel_7_days": funnel(["user"], pd.Timedelta(days=7)),
        "cohorts": {c.strftime("%Y-%m-%d"): int(n) for c, n in sizes.items()},
    }


def peak_rss_mb() -> float:
    """VmHWM: this process's peak resident memory (ru_maxrss would carry over the parent's
    across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(side: str, path: str, threads: int) -> None:
    if side == "duckdb":  # imports are not timed (pandas imports pyarrow and its compute too)
        import duckdb  # noqa: F401
        import pyarrow.compute  # noqa: F401

        _analytics_module()
    else:
        import pandas  # noqa: F401
    t0 = time.perf_counter()
    out = duckdb_side(path, threads) if side == "duckdb" else pandas_side(path)
    seconds = time.perf_counter() - t0
    rss = peak_rss_mb()
    print(json.dumps({"seconds": seconds, "peak_rss_mb": rss, "answer": out}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/behaviour.json")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.threads)
        return
    import pyarrow.parquet as pq

    from modelworks.collect.shop_simulator import simulate

    load = [Path("/proc/loadavg").read_text().split()[:3]]
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "events.parquet")
        events, _ = simulate(args.users, 0)
        import pyarrow as pa

        # as collect writes it: each row's place in its file (orders ties in the SQL)
        events = events.append_column("line", pa.array(range(events.num_rows), pa.int64()))
        pq.write_table(events, path)
        n = events.num_rows
        del events
        runs: dict[str, list[dict]] = {"duckdb": [], "pandas": []}
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        for _ in range(args.repeats):
            for side in ("duckdb", "pandas"):
                cmd = [sys.executable, __file__, "--child", side, path,
                       "--threads", str(args.threads)]  # fmt: skip
                res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
                runs[side].append(json.loads(res.stdout.strip().splitlines()[-1]))
    load.append(Path("/proc/loadavg").read_text().split()[:3])
    same = runs["duckdb"][0]["answer"] == runs["pandas"][0]["answer"]
    ratios = [
        p["seconds"] / d["seconds"] for d, p in zip(runs["duckdb"], runs["pandas"], strict=True)
    ]
    result = {
        "events": n,
        "users": args.users,
        "threads": args.threads,
        "same_answer": same,
        "duckdb_s": [r["seconds"] for r in runs["duckdb"]],
        "pandas_s": [r["seconds"] for r in runs["pandas"]],
        "speedup": ratios,
        "duckdb_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["duckdb"]),
        "pandas_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["pandas"]),
        "loadavg_before_after": load,
        "answer": runs["duckdb"][0]["answer"] | {"cohorts": "..."},
    }
    if not same:
        result["pandas_answer"] = runs["pandas"][0]["answer"] | {"cohorts": "..."}
    print(f"{n:,} events, {args.users:,} users, load {load[0]} -> {load[1]}")
    print("| side | seconds (each run) | peak RSS MB |\n|---|---|---|")
    for side in ("duckdb", "pandas"):
        secs = ", ".join(f"{r['seconds']:.2f}" for r in runs[side])
        print(f"| {side} | {secs} | {result[side + '_peak_rss_mb']:.0f} |")
    print(
        f"speedup (pandas / duckdb): {', '.join(f'{r:.2f}x' for r in ratios)}; same answer: {same}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
