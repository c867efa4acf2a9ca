"""User behaviour analysis (tasks/user_behaviour.py): the shop simulator's truth, event logs read
column-wise with their bad input named, the analytics SQL on a log worked by hand, and a tiny
run from collect to one scored request over HTTP."""

from __future__ import annotations

import json

import duckdb
import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from modelworks.cli import main
from modelworks.collect.shop_simulator import simulate, true_probability
from modelworks.config import load_config
from modelworks.errors import BehaviourDataError, CollectError
from modelworks.evaluate.event_analytics import analytics
from modelworks.lifecycle import stage_hash
from modelworks.pipeline import run, stage_functions
from modelworks.tasks import stage_options
from modelworks.tasks.user_behaviour import HISTORY_BOUND
from modelworks.tasks.user_behaviour_serve import load_state
from tests.conftest import served

KEY = "test-key-not-secret"


def _cfg(tmp_path, *overrides):
    return load_config(
        None,
        [f"runs_dir={tmp_path / 'runs'}", "name=beh", "task=user_behaviour", "threads=1",
         "model.name=behaviour", "model.max_len=32", "model.d_model=32", "model.n_layer=1",
         "tasks.user_behaviour.max_len=32", "pretrain.steps=30", "pretrain.batch_size=32",
         "pretrain.warmup_steps=3", "pretrain.eval_every=15", "pretrain.ckpt_every=15",
         "pretrain.best_metric=val_auc", "pretrain.best_mode=max", *overrides],
    )  # fmt: skip


def test_the_simulators_true_probability_matches_what_happens():
    events, truth = simulate(3000, seed=1)
    cutoff, days = np.datetime64("2026-04-01T00:00:00", "us"), 14.0
    cols = {
        c: truth.column(c).to_numpy() for c in truth.column_names if c not in ("user", "segment")
    }
    p = true_probability(cols, cutoff, days)
    hit = _buyers(events, cutoff)
    users = truth.column("user").to_pylist()
    known = ~np.isnan(p)
    y = np.array([u in hit for u in users])[known]
    assert abs(p[known].mean() - y.mean()) < 0.02, (p[known].mean(), y.mean())
    # and it ranks: the truth separates buyers from the rest
    assert p[known][y].mean() > 2 * p[known][~y].mean()


def _buyers(events, cutoff, days: int = 14) -> set[str]:
    """Users with a purchase in [cutoff, cutoff + days)."""
    rows = duckdb.sql(
        "SELECT DISTINCT user FROM events WHERE event = 'purchase' AND time >= $a AND time < $b",
        params={"a": cutoff.item(), "b": (cutoff + np.timedelta64(days, "D")).item()},
    ).fetchall()
    return {u for (u,) in rows}


def test_the_history_bound_is_calibrated_and_below_the_oracle():
    """history_probability (the simulator's Bayes posterior given a user's history) is a
    probability: its mean is what happens; it ranks buyers below the oracle, which also knows who
    has churned, and far above chance."""
    from sklearn.metrics import roc_auc_score

    from modelworks.collect.shop_simulator import history_bound

    events, truth = simulate(3000, seed=2)
    cutoff = np.datetime64("2026-04-01T00:00:00", "us")
    rows = {u: i for i, u in enumerate(truth.column("user").to_pylist())}
    seen = duckdb.sql("SELECT DISTINCT user FROM events WHERE time < $c ORDER BY user",
                      params={"c": cutoff.item()}).fetchall()  # fmt: skip
    users = [u for (u,) in seen]
    idx = np.array([rows[u] for u in users])
    segments = np.array(truth.column("segment").to_pylist())[idx].tolist()
    bound = history_bound(events, segments, users, cutoff, 14.0)
    cols = {c: truth.column(c).to_numpy()[idx] for c in ("session_rate", "purchase_per_session",
            "churn_hazard", "signup", "churn")}  # fmt: skip
    oracle = true_probability(cols, cutoff, 14.0)
    y = np.isin(users, list(_buyers(events, cutoff)))
    assert abs(bound.mean() - y.mean()) < 0.02, (bound.mean(), y.mean())
    auc_bound, auc_oracle = roc_auc_score(y, bound), roc_auc_score(y, oracle)
    assert 0.75 < auc_bound < auc_oracle, (auc_bound, auc_oracle)


def _log(tmp_path, text: str, name: str = "log.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_new_seed_simulates_a_new_shop_and_collects_it_again(tmp_path):
    sim = ("collect.sources.0.type=shop_simulator", "collect.sources.0.users=50")
    cfg = _cfg(tmp_path, *sim)
    stage_functions()["collect"](cfg)
    written = json.loads((cfg.run_dir / "collect" / "manifest.json").read_text())["config_hash"]

    def digest(*overrides):
        c = _cfg(tmp_path, *overrides)
        return stage_hash(c, "collect", stage_options(c, "collect"))

    assert written == digest(*sim) != digest(*sim, "seed=1")  # the old log is not reused
    files = ("collect.sources.0.type=events", f"collect.sources.0.paths=[{tmp_path}]")
    assert digest(*files) == digest(*files, "seed=1")  # files are read the same under any seed


def test_an_unparseable_time_is_named_with_file_line_and_value(tmp_path):
    path = _log(tmp_path, "uid,ts,action\na,2026-01-01 10:00:00,view\nb,yesterday,view\n")
    cfg = _cfg(
        tmp_path,
        "collect.sources.0.type=events",
        f"collect.sources.0.paths=[{path}]",
        "collect.sources.0.user_field=uid",
        "collect.sources.0.time_field=ts",
        "collect.sources.0.event_field=action",
        "collect.sources.0.max_bad_rows=0",
    )
    with pytest.raises(CollectError, match=r"log.csv:3 \(time 'yesterday'\)"):
        run(cfg)


LOG = """user,time,event,item,category,value
a,2026-01-05 10:00:00,view,x1,shoes,
a,2026-01-05 10:01:00,cart,x1,shoes,
a,2026-01-05 10:02:00,purchase,x1,shoes,20
a,2026-01-05 10:02:00,purchase,x1,shoes,20
a,2026-01-05 12:00:00,cart,x2,bags,
b,2026-01-06 09:00:00,view,x2,bags,
b,2026-01-05 09:00:00,view,x3,bags,
b,2026-01-09 09:10:00,cart,x2,bags,
c,2026-01-20 09:00:00,view,x1,shoes,
"""


def test_funnel_sessions_and_retention_on_a_log_worked_by_hand():
    con = duckdb.connect()
    rows = [line.split(",") for line in LOG.strip().splitlines()[1:]]
    con.execute("CREATE TABLE e (user VARCHAR, time TIMESTAMP, event VARCHAR, item VARCHAR, "
                "category VARCHAR, value DOUBLE, line BIGINT)").fetchall()  # fmt: skip
    for i, r in enumerate(rows):
        con.execute("INSERT INTO e VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [*r[:5], float(r[5]) if r[5] else None, i]).fetchall()  # fmt: skip
    a = analytics(con, ["view", "cart", "purchase"], 30, 7, np.datetime64("2026-01-21").item())
    # sessions: a: 10:00-10:02 and 12:00; b: 01-05, 01-06, 01-09; c: one
    assert a["sessions"]["count"] == 6
    session = [s["count"] for s in a["funnel"]["session"]]
    assert session == [4, 1, 1]  # a's first session goes view -> cart -> purchase
    user = [s["count"] for s in a["funnel"]["7_days"]]
    assert user == [3, 2, 1]  # b carts within 7 days of their first view; c never carts
    weeks = a["retention_weekly"]
    assert weeks["2026-01-05"]["users"] == 2 and weeks["2026-01-05"]["active_share"][:3] == [
        1,
        0,
        0,
    ]


def test_bad_funnel_steps_cutoffs_duplicates_and_order_are_named_or_counted(tmp_path):
    path = _log(tmp_path, LOG)
    base = ["collect.sources.0.type=events", f"collect.sources.0.paths=[{path}]",
            "collect.sources.0.time_field=time"]  # fmt: skip
    with pytest.raises(BehaviourDataError, match=r"funnel: 'checkout' not in the log; its event "):
        run(_cfg(tmp_path, *base, "tasks.user_behaviour.funnel=[view,checkout]"))
    with pytest.raises(BehaviourDataError, match="is after the last event"):
        run(_cfg(tmp_path, *base, "tasks.user_behaviour.cutoff=2027-01-01"))
    with pytest.raises(BehaviourDataError, match="leaves no full holdout window"):
        run(_cfg(tmp_path, *base, "tasks.user_behaviour.horizon_days=10"))
    from modelworks.preprocess import preprocess

    cfg = _cfg(tmp_path, *base, "tasks.user_behaviour.horizon_days=3",
               "tasks.user_behaviour.cutoff=2026-01-10")  # fmt: skip
    stats = preprocess(cfg)["summary"]
    assert stats["duplicates"] == 1 and stats["out_of_order"] == 1
    assert stats["single_event_users"] == 1 and stats["events"] == 9


def test_a_tiny_run_serves_a_scored_user_over_http(tmp_path, monkeypatch):
    """With the propensity head fine-tuned on the frozen transformer, which evaluate, serve and
    predict then read."""
    monkeypatch.setenv("MODELWORKS_PSEUDONYM_KEY", KEY)
    cfg = _cfg(
        tmp_path, "collect.sources.0.type=shop_simulator", "collect.sources.0.users=400",
        "finetune.from=pretrain", "finetune.steps=40", "finetune.batch_size=32",
        "finetune.lr=1e-3", "finetune.eval_every=20", "finetune.ckpt_every=20",
        "finetune.best_metric=val_auc", "finetune.best_mode=max",
        "tasks.user_behaviour.head_state_dim=4", "tasks.user_behaviour.head_hidden=16",
    )  # fmt: skip
    stages = ("collect", "preprocess", "pretrain", "finetune", "evaluate")
    assert run(cfg) == {s: "ran" for s in stages}
    base = load_file(str(cfg.run_dir / "pretrain" / "model.safetensors"))
    tuned = load_file(str(cfg.run_dir / "finetune" / "best" / "model.safetensors"))
    head = {k for k in tuned if k.startswith(("propensity.", "propensity_in."))}
    assert tuned["propensity_in.weight"].shape == (4, 32)
    assert tuned["propensity.0.weight"].shape == (16, 4 + 10)  # the state's 4 + 2 x 5 features
    assert set(tuned) - head == set(base) - head  # the same body, click heads and scaling ...
    assert all(torch.equal(tuned[k], base[k]) for k in set(tuned) - head)  # ... left as they were
    metrics = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    assert set(metrics["propensity"]) == {
        "behaviour transformer", "RFM logistic regression", "BG/NBD", "oracle (simulator truth)",
        HISTORY_BOUND,
    }  # fmt: skip
    p = {k: v["auc"] for k, v in metrics["propensity"].items()}
    assert p["oracle (simulator truth)"] > 0.75 and 0.7 < p[HISTORY_BOUND] < 1, p
    report = (cfg.run_dir / "evaluate" / "report.md").read_text()
    assert "Funnel (session): view" in report and "cohorts.png" in report
    # privacy: no raw simulator id (u000123) anywhere in the run's files
    for f in cfg.run_dir.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".md", ".parquet", ".yaml"):
            assert b"u000123" not in f.read_bytes(), f
    with served(cfg.run_dir) as (base, _):
        r = httpx.post(f"{base}/v1/users/score", json={"user": "u000123", "k": 3}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert 0 < body["propensity"] < 1 and len(body["items"]) == 3
        model = load_state(cfg.run_dir, torch.device("cpu"))["model"]  # what the server loaded
        assert model.propensity_in is not None
        assert body["user"] != "u000123" and body["weighed_most"]
        events = [{"time": "2026-04-20T10:00:00", "event": "view", "item": "shoes-003",
                   "category": "shoes"}, {"time": "2026-04-20T10:01:00", "event": "cart",
                   "item": "shoes-003", "category": "shoes"}]  # fmt: skip
        r = httpx.post(f"{base}/v1/users/score", json={"events": events,
                       "at": "2026-04-21T00:00:00"}, timeout=60)  # fmt: skip
        assert r.status_code == 200, r.text
        assert "shoes-003" not in [i["item"] for i in r.json()["items"]]
        r = httpx.post(f"{base}/v1/users/score", json={"user": "nobody"}, timeout=60)
        assert r.status_code == 404 and r.json()["error"]["param"] == "user"
        # `modelworks predict`: a whole log scored in batches, as the endpoint scores each user
        log = tmp_path / "new.csv"
        log.write_text(
            "user,timestamp,event,item,category,value\n"
            "ann,2026-04-20T10:00:00,view,shoes-003,shoes,\n"
            "bob,2026-04-19T09:00:00,view,books-001,books,\n"
            "bob,not a time,view,books-001,books,\n"
            "ann,2026-04-20T10:01:00,cart,shoes-003,shoes,\n"
        )
        out = tmp_path / "scores.parquet"
        args = ["predict", str(cfg.run_dir), "--data", str(log), "--out", str(out)]
        assert main(args) == 0
        rows = {r["user"]: r for r in pq.read_table(out).to_pylist()}
        assert sorted(rows) == ["ann", "bob"] and "shoes-003" not in rows["ann"]["top_items"]
        r = httpx.post(f"{base}/v1/users/score", json={"events": events[:2],
                       "at": "2026-04-20T10:01:00"}, timeout=60)  # fmt: skip
        assert abs(r.json()["propensity"] - rows["ann"]["propensity"]) < 1e-6


@pytest.mark.slow
def test_on_the_simulator_the_model_beats_its_baselines_on_held_out_time(tmp_path):
    """A reduced configs/behaviour.yaml (5,000 users, shorter training): the quality claims on
    the test window (after the cutoff), which no training step saw."""
    cfg = load_config(
        "configs/behaviour.yaml",
        [f"runs_dir={tmp_path / 'runs'}", "collect.sources.0.users=5000", "model.max_len=64",
         "tasks.user_behaviour.max_len=64", "pretrain.steps=300", "pretrain.eval_every=100",
         "pretrain.ckpt_every=100"],
    )  # fmt: skip
    run(cfg)
    m = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    p = {k: v["auc"] for k, v in m["propensity"].items()}
    assert p["behaviour transformer"] > p["RFM logistic regression"] > p["BG/NBD"] - 0.02, p
    assert p["oracle (simulator truth)"] - p["behaviour transformer"] < 0.06, p
    # the simulator's Bayes posterior given the history: what no model of the log can beat
    # (beyond noise), and below the oracle, which also knows who has churned
    assert p["behaviour transformer"] - 0.01 < p[HISTORY_BOUND] < p["oracle (simulator truth)"]
    assert p[HISTORY_BOUND] > p["RFM logistic regression"], p
    # the head fine-tuned on the frozen transformer (evaluate's model) keeps pretraining's ranking
    from modelworks.artifacts import best_or_final
    from modelworks.evaluate.propensity import metrics
    from modelworks.tasks.user_behaviour import score
    from modelworks.tasks.user_behaviour_data import history_features, load_windows
    from modelworks.train.checkpoint import load_model

    t, _, _ = load_windows(cfg.run_dir)
    pre = load_model(best_or_final(cfg.run_dir / "pretrain"), torch.device("cpu")).eval()
    p_pre, _ = score(pre, t["test_x"], "cpu", history_features(t["test_rfm"]))
    assert p["behaviour transformer"] > metrics(t["test_y"].numpy(), p_pre)["auc"] - 0.01, p
    assert m["segments"]["ari_vs_planted"] >= 0.8, m["segments"]
    assert m["segments"]["rfm_quantile_ari_vs_planted"] < 0.3, m["segments"]
    c = {k: v["auc"] for k, v in m["click"]["methods"].items()}
    assert c["DIN (target attention)"] >= c["popularity"] + 0.10, c


def test_many_files_of_several_formats_make_one_log(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from modelworks.collect import collect

    logs = tmp_path / "logs"
    logs.mkdir()
    pq.write_table(
        pa.table({"who": ["a", "a"], "at": pa.array([1767600000.0, 1767600060.0]),
                  "what": ["view", "cart"]}),
        logs / "part1.parquet",
    )  # fmt: skip
    (logs / "part2.jsonl").write_text(
        '{"who": "b", "at": "2026-01-05T10:00:00", "what": "view"}\n'
        '{"who": "b", "at": "2026-01-05T10:02:00", "what": "purchase", "value": 9.5}\n'
    )
    (logs / "part3.tsv").write_text("who\tat\twhat\nc\t2026-01-06\tview\n")
    cfg = _cfg(tmp_path, "collect.sources.0.type=events", f"collect.sources.0.paths=[{logs}]",
               "collect.sources.0.user_field=who", "collect.sources.0.time_field=at",
               "collect.sources.0.event_field=what")  # fmt: skip
    summary = collect(cfg)["summary"]
    assert summary["events"] == 5 and summary["users"] == 3
    rows = duckdb.sql(
        f"SELECT event, value, time FROM '{cfg.run_dir / 'collect' / 'events.parquet'}' "
        "ORDER BY time"
    ).fetchall()
    assert [r[0] for r in rows] == ["view", "cart", "view", "purchase", "view"]
    assert rows[3][1] == 9.5 and str(rows[0][2]) == "2026-01-05 08:00:00"
