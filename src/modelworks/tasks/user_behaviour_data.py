"""user_behaviour preprocessing: checks, stats, analytics and model inputs from events.parquet.

All in DuckDB over `<run>/collect/events.parquet` (column-wise): duplicates and events out of
time order are counted (duplicates dropped, the rest sorted), the funnel steps and the target
event checked against the names present, the cutoff against the log's time range. Three windows:

- train: history before `cutoff - horizon`, label = a target event in [cutoff - H, cutoff);
- test: history before `cutoff`, label = a target event in [cutoff, cutoff + H);
- now: the whole log (what the server scores for a user the run knows).

A token is (category or item value, event name, gap since the previous event in buckets); each
window's sequence ends with a cutoff token carrying the gap from the last event to the cutoff.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from modelworks.artifacts import atomic_write_json
from modelworks.collect.events import EXTRA_PREFIX
from modelworks.errors import BehaviourDataError
from modelworks.evaluate.event_analytics import analytics, rfm_sql
from modelworks.tasks import user_behaviour_extra as extra
from modelworks.tasks.user_behaviour_clicks import candidates
from modelworks.tasks.user_behaviour_options import options_of

# gap bucket edges, seconds: 1 min, 10 min, 1 h, 6 h, 1 d, 3 d, 7 d, 14 d, 30 d
GAP_EDGES = [60, 600, 3600, 21600, 86400, 259200, 604800, 1209600, 2592000]
N_GAPS = len(GAP_EDGES) + 1
MAX_EVENTS = 32
RFM_FEATURES = ["recency", "frequency", "monetary", "tenure", "events"]


class Vocab:
    """Token ids: 0 padding; 1 + (value * events + event) * gaps + gap; then one cutoff token
    per gap bucket."""

    def __init__(self, values: list[str], events: list[str]) -> None:
        self.values, self.events = values, events
        self.value_index = {v: i for i, v in enumerate(values)}
        self.event_index = {v: i for i, v in enumerate(events)}

    @property
    def cutoff_base(self) -> int:
        return 1 + len(self.values) * len(self.events) * N_GAPS

    @property
    def size(self) -> int:
        return self.cutoff_base + N_GAPS

    def token(self, value: int, event: int, gap: np.ndarray | int):
        return 1 + (value * len(self.events) + event) * N_GAPS + gap

    def describe(self, tok: int) -> dict:
        if tok >= self.cutoff_base:
            return {"token": "cutoff", "gap_bucket": int(tok - self.cutoff_base)}
        rest, gap = divmod(tok - 1, N_GAPS)
        value, event = divmod(rest, len(self.events))
        return {"value": self.values[value], "event": self.events[event], "gap_bucket": int(gap)}

    def to_json(self) -> dict:
        return {"values": self.values, "events": self.events, "gap_edges_s": GAP_EDGES}


def gap_bucket(seconds: np.ndarray) -> np.ndarray:
    """Bucket of a gap; NaN (no previous event) is the last bucket."""
    s = np.nan_to_num(np.asarray(seconds, dtype=np.float64), nan=np.inf)
    return np.searchsorted(np.array(GAP_EDGES, dtype=np.float64), s, side="right")


def prepare(cfg, run_dir: Path, out: Path, reporter) -> dict:
    import duckdb

    opt = options_of(cfg)
    path = run_dir / "collect" / "events.parquet"
    if not path.is_file():
        raise BehaviourDataError(
            f"{path} does not exist: task user_behaviour needs an event source "
            "(collect.sources type: events or shop_simulator)"
        )
    con = duckdb.connect()
    con.execute(f"SET threads = {max(1, cfg.threads or 1)}").fetchall()
    con.execute(f"CREATE VIEW raw AS SELECT * FROM '{path}'").fetchall()
    stats = check_log(con, opt)
    xs = "".join(
        f', "{r[0]}"' for r in con.sql("DESCRIBE raw").fetchall() if r[0].startswith(EXTRA_PREFIX)
    )
    con.execute(
        f"CREATE TABLE e AS SELECT user, time, event, item, category, value{xs}, "
        "min(line) AS line FROM raw GROUP BY ALL ORDER BY user, time, line"
    ).fetchall()
    cutoff, first, last = stats["cutoff"], stats["first_event"], stats["last_event"]
    figures = analytics(con, opt.funnel, opt.session_gap_minutes, opt.funnel_days, cutoff)
    atomic_write_json(out / "analytics.json", figures)
    field = opt.token_field
    values = [
        r[0]
        for r in con.sql(
            f"SELECT coalesce({field}, '(none)') AS v FROM e GROUP BY v "
            f"ORDER BY count(*) DESC, v LIMIT {opt.max_token_values - 1}"
        ).fetchall()
    ]
    vocab = Vocab([*values, "(other)"], stats["event_names"])
    atomic_write_json(out / "vocab.json", vocab.to_json())
    h = np.timedelta64(int(opt.horizon_days * 86400e6), "us")
    train_cut = np.datetime64(cutoff, "us") - h
    spec = None
    if opt.extra_columns:
        spec = extra.fit_spec(con, opt.extra_columns, opt.extra_buckets, train_cut)
        atomic_write_json(out / "extra.json", spec)
    tensors, users, counts = {}, {}, {}
    item_counts = np.array(
        [r[0] for r in con.sql(
            "SELECT count(*) AS n FROM e WHERE item IS NOT NULL GROUP BY item ORDER BY n DESC, item"
        ).fetchall()], np.float64
    )  # fmt: skip
    earlier = [(f"train{k}", train_cut - k * h) for k in range(1, opt.train_windows)]
    if earlier and earlier[-1][1] - h <= np.datetime64(first, "us"):
        raise BehaviourDataError(
            f"tasks.user_behaviour.train_windows={opt.train_windows}: the earliest training "
            f"cutoff {earlier[-1][1]} leaves less than horizon_days of history after the first "
            f"event ({first}); lower it"
        )
    for k, (name, cut) in enumerate(
        (
            ("train", train_cut),
            *earlier,
            ("test", np.datetime64(cutoff, "us")),
            ("now", np.datetime64(last, "us") + np.timedelta64(1, "s")),
        )
    ):
        x, u, item_hist, ex = sequences(con, vocab, field, cut, opt.max_len, spec)
        users[name] = u
        if spec:
            tensors[f"{name}_extra"] = torch.from_numpy(ex)
        tensors[f"{name}_x"] = torch.from_numpy(x)
        tensors[f"{name}_items"] = torch.from_numpy(item_hist)
        feats = rfm_features(con, opt.target_event, cut)
        tensors[f"{name}_rfm"] = torch.from_numpy(feats)
        if name != "now":
            y = labels(con, u, opt.target_event, cut, cut + h)
            if name in ("train", "test"):
                b = bgnbd_inputs(con, opt.target_event, cut)
                tensors[f"{name}_bgnbd"] = torch.from_numpy(b)
            tensors[f"{name}_y"] = torch.from_numpy(y)
            if len(item_counts):
                seed = cfg.seed + (k if name.startswith("train") else 0)
                cand, click = candidates(con, u, cut, cut + h, item_counts, seed)
                tensors[f"{name}_cand"] = torch.from_numpy(cand)
                tensors[f"{name}_click"] = torch.from_numpy(click)
            counts[name] = {"users": len(u), "positives": int(y.sum()), "cutoff": str(cut)}
    save_file(tensors, str(out / "windows.safetensors"))
    atomic_write_json(out / "users.json", users)
    items = con.sql(
        "SELECT item, any_value(category), count(*) AS n FROM e WHERE item IS NOT NULL "
        "GROUP BY item ORDER BY n DESC, item"
    ).fetchall()
    atomic_write_json(
        out / "items.json",
        {
            "items": [r[0] for r in items],
            "categories": [r[1] for r in items],
            "counts": [r[2] for r in items],
        },
    )
    con.close()
    stats |= {
        "windows": counts,
        "vocab_size": vocab.size,
        "first_event": first,
        "last_event": last,
        "sessions": figures["sessions"]["count"],
    }
    reporter.info(
        f"[preprocess] {stats['events']} events, {stats['users']} users; "
        f"{stats['duplicates']} duplicates dropped, {stats['out_of_order']} out of time order "
        f"(sorted), {stats['single_event_users']} users with one event; cutoff {cutoff}, "
        f"test window {counts['test']['users']} users, {counts['test']['positives']} positives"
    )
    return stats


def check_log(con, opt) -> dict:
    """Counts and the one-line errors: funnel steps, target event, cutoff."""
    n, users, first, last = con.sql(
        "SELECT count(*), count(DISTINCT user), min(time), max(time) FROM raw"
    ).fetchall()[0]
    dup = (
        n
        - con.sql(
            "SELECT count(*) FROM "
            "(SELECT DISTINCT user, time, event, item, category, value FROM raw)"
        ).fetchall()[0][0]
    )
    ooo = con.sql(
        "SELECT count(*) FROM (SELECT time < lag(time) OVER (PARTITION BY user, source "
        "ORDER BY line) AS back FROM raw) WHERE back"
    ).fetchall()[0][0]
    single = con.sql(
        "SELECT count(*) FROM (SELECT user FROM raw GROUP BY user HAVING count(*) = 1)"
    ).fetchall()[0][0]
    names = [
        r[0]
        for r in con.sql("SELECT event FROM raw GROUP BY event ORDER BY count(*) DESC").fetchall()
    ]
    shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
    for key, wanted in (("funnel", opt.funnel), ("target_event", [opt.target_event])):
        missing = [s for s in wanted if s not in names]
        if missing:
            raise BehaviourDataError(
                f"tasks.user_behaviour.{key}: {', '.join(map(repr, missing))} not in the log; "
                f"its event names: {shown}"
            )
    if len(names) > MAX_EVENTS:
        raise BehaviourDataError(
            f"the log has {len(names)} event names, more than {MAX_EVENTS} tokens allow; "
            "map them to fewer names"
        )
    h = np.timedelta64(int(opt.horizon_days * 86400e6), "us")
    first, last = np.datetime64(first, "us"), np.datetime64(last, "us")
    if opt.cutoff:
        try:
            cutoff = np.datetime64(opt.cutoff, "us")
        except ValueError:
            raise BehaviourDataError(
                f"tasks.user_behaviour.cutoff: {opt.cutoff!r} is not an ISO date or date-time"
            ) from None
    else:
        cutoff = last - h
    if cutoff > last:
        raise BehaviourDataError(
            f"tasks.user_behaviour.cutoff: {cutoff} is after the last event ({last}); "
            "choose an earlier cutoff"
        )
    if cutoff + h > last + np.timedelta64(1, "D") or cutoff - h <= first:
        raise BehaviourDataError(
            f"tasks.user_behaviour.cutoff: {cutoff} with horizon_days={opt.horizon_days:g} "
            f"leaves no full holdout window inside the log ({first} .. {last}); the cutoff "
            "needs horizon_days of events after it and before it"
        )
    return {
        "events": int(n),
        "users": int(users),
        "duplicates": int(dup),
        "out_of_order": int(ooo),
        "single_event_users": int(single),
        "event_names": names,
        "cutoff": str(cutoff),
        "first_event": str(first),
        "last_event": str(last),
    }


def sequences(con, vocab: Vocab, field: str, cut, max_len: int, spec: dict | None = None):
    """(tokens (users, max_len) right-padded, sorted user ids, last item ids (users, max_len)
    as indices into items by count, -1 none, extra-column ids (users, max_len, columns) or
    None) of every user with an event before `cut`."""
    xcols = [EXTRA_PREFIX + c["name"] for c in spec["columns"]] if spec else []
    xsel = "".join(f', "{c}"' for c in xcols)
    q = f"""
        WITH v(value, vi) AS (SELECT * FROM (VALUES {
        ", ".join(f"('{_q(x)}', {i})" for i, x in enumerate(vocab.values))
    })),
        ev(event, ei) AS (SELECT * FROM (VALUES {
        ", ".join(f"('{_q(x)}', {i})" for i, x in enumerate(vocab.events))
    })),
        it AS (SELECT item, row_number() OVER (ORDER BY count(*) DESC, item) - 1 AS ii
               FROM e WHERE item IS NOT NULL GROUP BY item),
        h AS (SELECT user, time, line{xsel}, coalesce(vi, {len(vocab.values) - 1}) AS vi, ei,
                coalesce(ii, -1) AS ii,
                epoch(time - lag(time) OVER (PARTITION BY user ORDER BY time, line)) AS gap,
                row_number() OVER (PARTITION BY user ORDER BY time DESC, line DESC) AS rn
              FROM e LEFT JOIN v ON coalesce(e.{field}, '(none)') = v.value
              JOIN ev USING (event) LEFT JOIN it USING (item)
              WHERE time < $cut)
        SELECT user, vi, ei, ii, gap, rn, epoch($cut - time) AS since{xsel} FROM h
        WHERE rn < {max_len} ORDER BY user, time, line"""
    t = con.sql(q, params={"cut": cut.astype("datetime64[us]").item()}).arrow().read_all()
    user = t.column("user").to_numpy(zero_copy_only=False)
    users, start, lengths = np.unique(user, return_index=True, return_counts=True)
    tok = vocab.token(
        t.column("vi").to_numpy(),
        t.column("ei").to_numpy(),
        gap_bucket(t.column("gap").to_numpy(zero_copy_only=False)),
    )
    since = t.column("since").to_numpy()
    x = np.zeros((len(users), max_len), np.int64)
    items = np.full((len(users), max_len), -1, np.int64)
    pos = np.arange(len(user)) - np.repeat(start, lengths)
    row = np.repeat(np.arange(len(users)), lengths)
    x[row, pos] = tok
    items[row, pos] = t.column("ii").to_numpy()
    last = start + lengths - 1
    x[np.arange(len(users)), lengths] = vocab.cutoff_base + gap_bucket(since[last])
    ex = None
    if spec:
        raw = {c[len(EXTRA_PREFIX) :]: t.column(c).to_numpy(zero_copy_only=False) for c in xcols}
        ex = np.zeros((len(users), max_len, len(xcols)), np.int64)
        ex[row, pos] = extra.ids(raw, spec)
    return x, [str(u) for u in users], items, ex


def labels(con, users: list[str], target: str, start, end) -> np.ndarray:
    rows = con.execute(
        "SELECT DISTINCT user FROM e WHERE event = $t AND time >= $a AND time < $b",
        {"t": target, "a": start.item(), "b": end.item()},
    ).fetchall()
    hit = {r[0] for r in rows}
    return np.array([u in hit for u in users], np.float32)


def rfm_features(con, target: str, cut) -> np.ndarray:
    """(users with an event before `cut`, sorted, RFM_FEATURES) float32."""
    rows = con.execute(rfm_sql(target), {"target": target, "cutoff": cut.item()}).fetchall()
    return np.array([r[1:6] for r in rows], np.float32).reshape(-1, len(RFM_FEATURES))


def history_features(rfm) -> torch.Tensor:
    """The propensity head's whole-history inputs: RFM_FEATURES on two scales, log1p and as
    they are (the model standardises each column: models/behaviour.py)."""
    rfm = torch.as_tensor(rfm, dtype=torch.float32).clamp(min=0)
    return torch.cat([torch.log1p(rfm), rfm], -1)


def bgnbd_inputs(con, target: str, cut) -> np.ndarray:
    """(users, 3): BG/NBD's frequency (repeat purchase days), recency (days from the first to
    the last purchase day) and age (days from the first purchase, else first event, to `cut`)."""
    rows = con.execute(
        """WITH p AS (SELECT user, date_trunc('day', time) AS d FROM e
                      WHERE event = $target AND time < $cut GROUP BY ALL),
        f AS (SELECT user, count(*) - 1 AS x, epoch(max(d) - min(d)) / 86400 AS rec,
              min(d) AS first FROM p GROUP BY user),
        u AS (SELECT user, min(time) AS t0 FROM e WHERE time < $cut GROUP BY user)
        SELECT u.user, coalesce(x, 0), coalesce(rec, 0),
               epoch($cut - coalesce(first, u.t0)) / 86400
        FROM u LEFT JOIN f USING (user) ORDER BY u.user""",
        {"target": target, "cut": cut.item()},
    ).fetchall()
    return np.array([r[1:] for r in rows], np.float32).reshape(-1, 3)


def _q(s: str) -> str:
    return str(s).replace("'", "''")


def load_windows(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict, Vocab]:
    pre = run_dir / "preprocess"
    tensors = load_file(str(pre / "windows.safetensors"))
    users = json.loads((pre / "users.json").read_text())
    v = json.loads((pre / "vocab.json").read_text())
    return tensors, users, Vocab(v["values"], v["events"])


def is_val(user: str) -> bool:
    """10% of users, by a stable hash of their pseudonym, validate the training."""
    return zlib.crc32(user.encode()) % 10 == 0


def training_windows(tensors: dict) -> list[str]:
    """The windows training reads: train (cutoff - horizon), then train1, train2, ... further
    back (tasks.user_behaviour.train_windows)."""
    more = [
        k[:-2] for k in tensors if k.startswith("train") and k.endswith("_x") and k[5:-2].isdigit()
    ]
    return ["train", *sorted(more, key=lambda k: int(k[5:]))]
