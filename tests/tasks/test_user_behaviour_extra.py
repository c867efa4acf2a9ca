"""Extra event-log columns as features (tasks.user_behaviour.extra_columns)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from modelworks.cli import main
from modelworks.errors import BehaviourDataError
from modelworks.evaluate.propensity import metrics
from modelworks.pipeline import run
from tests.conftest import served
from tests.tasks.test_user_behaviour import KEY, _cfg

DAY = 86400


def _log(path, users: int = 400, seed: int = 0) -> None:
    """A log where only the `plan` column tells who buys in the label windows: gold users buy
    with probability 0.7 in each of the last two 14-day windows, basic users 0.03; views,
    categories and the numeric `price` column carry no signal."""
    rng = np.random.default_rng(seed)
    t0 = np.datetime64("2026-01-01T00:00:00", "s")
    rows = ["user,timestamp,event,item,category,value,plan,price"]
    for u in range(users):
        plan = "gold" if rng.random() < 0.5 else "basic"
        p = 0.7 if plan == "gold" else 0.03
        events = [(d, "view") for d in rng.uniform(0, 70, rng.integers(8, 20))]
        events += [(d, "purchase") for d in rng.uniform(0, 42, 1) if rng.random() < 0.2]
        for lo in (42, 56):
            if rng.random() < p:
                events.append((rng.uniform(lo, lo + 14), "purchase"))
        if u == 0:
            events.append((69.99, "view"))
        for d, ev in sorted(events):
            t = t0 + np.timedelta64(int(d * DAY), "s")
            item = f"i{rng.integers(20)}"
            value = "10" if ev == "purchase" else ""
            rows.append(
                f"u{u},{t},{ev},{item},c{item[-1]},{value},{plan},{rng.uniform(1, 100):.1f}"
            )
    path.write_text("\n".join(rows) + "\n")


def _extra_cfg(tmp_path, path, *overrides):
    return _cfg(
        tmp_path,
        "collect.sources.0.type=events",
        f"collect.sources.0.paths=[{path}]",
        "collect.sources.0.extra_fields=[plan,price]",
        "tasks.user_behaviour.funnel=[view,purchase]",
        *overrides,
    )


def test_an_extra_column_carrying_the_signal_is_used_on_held_out_time(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELWORKS_PSEUDONYM_KEY", KEY)
    path = tmp_path / "log.csv"
    _log(path)
    cfg = _extra_cfg(tmp_path, path, "tasks.user_behaviour.extra_columns=[plan,price]",
                     "pretrain.steps=60", "pretrain.lr=3e-3")  # fmt: skip
    run(cfg)
    spec = json.loads((cfg.run_dir / "preprocess" / "extra.json").read_text())
    assert [c["kind"] for c in spec["columns"]] == ["categorical", "numeric"]
    m = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    auc = {k: v["auc"] for k, v in m["propensity"].items()}
    # test window: history before the cutoff, labels after it (no training step saw them)
    assert auc["behaviour transformer"] > 0.8, auc
    assert auc["behaviour transformer"] > auc["RFM logistic regression"] + 0.05, auc
    # the same model with the users' extra values shuffled among them: the signal is gone
    from modelworks.artifacts import best_or_final
    from modelworks.tasks.user_behaviour import score
    from modelworks.tasks.user_behaviour_data import history_features, load_windows
    from modelworks.train.checkpoint import load_model

    model = load_model(best_or_final(cfg.run_dir / "pretrain"), torch.device("cpu")).eval()
    t, _, _ = load_windows(cfg.run_dir)
    feats = history_features(t["test_rfm"])
    order = torch.randperm(len(t["test_extra"]), generator=torch.Generator().manual_seed(0))
    shuffled = t["test_extra"][order]
    y = t["test_y"].numpy().astype(np.float64)
    real = metrics(y, score(model, t["test_x"], "cpu", feats, extra=t["test_extra"])[0])["auc"]
    gone = metrics(y, score(model, t["test_x"], "cpu", feats, extra=shuffled)[0])["auc"]
    assert real - gone > 0.15, (real, gone)
    # `modelworks predict` reads the column from a new log: the gold user scores higher
    new = tmp_path / "new.csv"
    new.write_text(
        "user,timestamp,event,item,category,value,plan,price\n"
        "g,2026-03-01T10:00:00,view,i1,c1,,gold,50\nb,2026-03-01T10:00:00,view,i1,c1,,basic,50\n"
    )
    out = tmp_path / "scores.parquet"
    assert main(["predict", str(cfg.run_dir), "--data", str(new), "--out", str(out)]) == 0
    p = {r["user"]: r["propensity"] for r in pq.read_table(out).to_pylist()}
    assert p["g"] > p["b"] + 0.1, p
    # the endpoint reads the same field from posted events, and a known user's stored values
    with served(cfg.run_dir) as (base, _):
        got = {}
        for plan in ("gold", "basic"):
            ev = {"time": "2026-03-01T10:00:00", "event": "view", "item": "i1", "category": "c1",
                  "plan": plan, "price": 50}  # fmt: skip
            body = {"events": [ev], "at": "2026-03-01T10:00:00"}
            r = httpx.post(f"{base}/v1/users/score", json=body, timeout=60)
            assert r.status_code == 200, r.text
            got[plan] = r.json()["propensity"]
        assert abs(got["gold"] - p["g"]) < 1e-6 and abs(got["basic"] - p["b"]) < 1e-6, (got, p)
        r = httpx.post(f"{base}/v1/users/score", json={"user": "u0"}, timeout=60)
        assert r.status_code == 200 and 0 < r.json()["propensity"] < 1, r.text


def test_an_extra_column_absent_from_the_log_is_named(tmp_path):
    path = tmp_path / "log.csv"
    _log(path, users=30)
    cfg = _extra_cfg(tmp_path, path, "tasks.user_behaviour.extra_columns=[plan,tier]")
    with pytest.raises(BehaviourDataError, match=r"extra_columns: 'tier' is not in the event log"):
        run(cfg)
