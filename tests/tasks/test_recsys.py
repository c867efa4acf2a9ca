"""Recommendation: ranking metrics by hand, the leave-one-out split, bad input, a small end-to-end
run on the built-in stdlib data through the real CLI, and /v1/recommend on a real server."""

import json
import math
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch

from modelworks.collect.interactions import function_calls, read_interactions
from modelworks.evaluate import ranking
from modelworks.tasks import recommendation as rec
from tests.conftest import cli, served

# -- metrics -------------------------------------------------------------------------------------


def test_hr_ndcg_match_hand_computed_values():
    m = ranking.hr_ndcg(np.array([0, 1, 4, 10, 25]), [5, 10, 20])
    assert m["hr@5"] == pytest.approx(3 / 5)
    assert m["hr@10"] == pytest.approx(3 / 5)  # rank 10 is the 11th place
    assert m["hr@20"] == pytest.approx(4 / 5)
    top5 = 1 + 1 / math.log2(3) + 1 / math.log2(6)
    assert m["ndcg@5"] == pytest.approx(top5 / 5)
    assert m["ndcg@10"] == pytest.approx(top5 / 5)
    assert m["ndcg@20"] == pytest.approx((top5 + 1 / math.log2(12)) / 5)


def test_rank_counts_higher_scores_and_breaks_ties_by_the_shared_order():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1, 0.5]])
    tiebreak = torch.tensor([[0.3, 0.0, 0.1, 0.0, 0.9]])
    # target col 0 (0.5): one higher (0.9), tied with col 2 (earlier tiebreak) and col 4 (later)
    assert ranking.rank_of_target(scores, torch.tensor([0]), tiebreak).item() == 2
    assert ranking.rank_of_target(scores, torch.tensor([4]), tiebreak).item() == 3
    assert ranking.rank_of_target(scores, torch.tensor([1]), tiebreak).item() == 0


def test_full_and_sampled_protocols_on_handmade_scores():
    n_items = 6
    # one user: history [1, 2], target 5; scores put 1 (seen), 3 and 5 in that order
    table = torch.tensor([[0.0, 9.0, 0.5, 8.0, 0.1, 7.0, 0.2]])
    hist = [np.array([1, 2])]
    negs = np.array([[4, 6]])  # both score below the target
    out = ranking.evaluate_ranking(
        lambda users: table[users], hist, np.array([5]), negs, n_items, [1, 2], seed=0
    )
    # full: seen item 1 is masked, item 3 is ahead -> rank 1
    assert out["full"] == {"hr@1": 0.0, "ndcg@1": 0.0, "hr@2": 1.0, "ndcg@2": 1 / math.log2(3)}
    # sampled: only the target and items 4, 6 -> rank 0
    assert out["sampled"]["hr@1"] == 1.0 and out["sampled"]["ndcg@1"] == 1.0


def test_sampled_negatives_avoid_every_item_of_the_user():
    seqs = [np.array([1, 2, 3]), np.arange(1, 9)]
    negs = ranking.sample_negatives(seqs, 10, 4, seed=0)
    assert not set(negs[0]) & {1, 2, 3} and len(set(negs[0])) == 4
    assert sorted(negs[1][negs[1] > 0]) == [9, 10] and (negs[1] == -1).sum() == 2
    assert (ranking.sample_negatives(seqs, 10, 4, seed=0) == negs).all()


def test_item_knn_scores_by_cooccurrence():
    # items 1 and 2 always together; 3 with 4
    hist = [np.array([1, 2]), np.array([1, 2]), np.array([3, 4])]
    knn = ranking.ItemKNN(hist, 4)
    s = knn.scores([np.array([1])])[0]
    assert s[2] == pytest.approx(1.0) and s[3] == 0 and s[4] == 0


# -- data ------------------------------------------------------------------------------------------


def test_split_is_chronological_leave_one_out_after_dedup_and_k_core():
    df = pd.DataFrame(
        [
            # user a: rows out of time order, one repeat of x (the first one counts)
            ("a", "y", 2.0), ("a", "x", 1.0), ("a", "z", 3.0), ("a", "x", 4.0), ("a", "w", 5.0),
            ("b", "x", 1.0), ("b", "y", 2.0), ("b", "z", 3.0),
            ("c", "y", 1.0), ("c", "x", 2.0), ("c", "w", 3.0),
            ("d", "x", 1.0),  # one interaction: dropped and counted
            ("e", "x", 1.0), ("e", "rare", 2.0), ("e", "y", 3.0),  # loses 'rare', then too short
        ],
        columns=["user", "item", "timestamp"],
    )  # fmt: skip
    seqs, items, users, stats = rec.build_sequences(df, min_user=3, min_item=2)
    assert users == ["a", "b", "c"]
    assert stats["users_one_interaction"] == 1 and stats["duplicates"] == 1
    assert stats["items_below_k_core"] == 1 and stats["users_below_k_core"] == 1
    named = [[items[i - 1] for i in s] for s in seqs]
    assert named == [["x", "y", "z", "w"], ["x", "y", "z"], ["y", "x", "w"]]
    hist, targets = rec.split(seqs, "test")
    assert [items[t - 1] for t in targets] == ["w", "z", "w"]
    assert [[items[i - 1] for i in h] for h in hist][0] == ["x", "y", "z"]
    hist, targets = rec.split(seqs, "val")
    assert [items[t - 1] for t in targets] == ["z", "y", "x"]
    assert [[items[i - 1] for i in h] for h in hist] == [["x", "y"], ["x"], ["y"]]
    x, y = rec.training_windows(hist, max_len=3)
    assert x.tolist() == [[items.index("x") + 1, 0, 0]] and y[0, 0] == items.index("y") + 1


def test_training_windows_cover_long_histories():
    x, y = rec.training_windows([np.arange(1, 8)], max_len=3)  # 7 items
    assert x.tolist() == [[4, 5, 6], [1, 2, 3], [0, 0, 0]][:2]
    assert y.tolist() == [[5, 6, 7], [2, 3, 4]]


def test_function_calls_in_the_order_they_run():
    import ast
    import json.decoder

    tree = ast.parse(Path(json.decoder.__file__).read_text(encoding="utf-8"))
    calls = dict(function_calls("json.decoder", tree))
    decode = next(v for k, v in calls.items() if k.startswith("json.decoder:JSONDecoder.decode:"))
    # obj, end = self.raw_decode(s, idx=_w(s, 0).end()); end = _w(s, end).end(); len(s) ...
    assert decode == ["raw_decode", "_w", "end", "_w", "end", "len", "JSONDecodeError"]
    src = (
        "def f(x):\n    a(x)\n    def g():\n        b()\n"
        "    class C:\n        def m(self):\n            c()\n    d()\n"
    )
    got = dict(function_calls("mod", ast.parse(src)))
    assert got == {"mod:f:1": ["a", "d"], "mod:f.g:3": ["b"], "mod:f.C.m:6": ["c"]}


def test_interaction_files_and_missing_columns(tmp_path):
    good = tmp_path / "log.csv"
    good.write_text("uid,item,timestamp,rating\nu1,a,2024-01-02,5\nu1,b,2024-01-01,\n")
    rows = list(read_interactions([str(good)], "uid", "item", "timestamp", "rating", "src"))
    assert [r["item"] for r in rows] == ["a", "b"] and rows[0]["timestamp"] > rows[1]["timestamp"]
    assert rows[0]["rating"] == 5.0 and rows[1]["rating"] is None
    pq_path = tmp_path / "log.parquet"
    pd.DataFrame({"user": ["u"], "item": ["i"], "timestamp": [3]}).to_parquet(pq_path)
    assert (
        next(read_interactions([str(pq_path)], "user", "item", "timestamp", "r", "s"))["timestamp"]
        == 3.0
    )
    with pytest.raises(ValueError, match=r"log\.csv: no column 'user' \(src\.user_field\)"):
        list(read_interactions([str(good)], "user", "item", "timestamp", "rating", "src"))
    # through the CLI: one line, exit 2
    proc = cli(
        "collect", f"runs_dir={tmp_path / 'runs'}", "task=recommendation",
        "collect.sources.0.type=interactions", f"collect.sources.0.paths=[{good}]",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "log.csv" in lines[0] and "'user'" in lines[0], proc.stderr


# -- end to end ------------------------------------------------------------------------------------

SMALL = [
    "collect.sources.0.limit=20000",
    "model.d_model=32",
    "pretrain.steps=200",
    "pretrain.batch_size=64",
    "pretrain.eval_every=100",
    "pretrain.ckpt_every=100",
    "pretrain.log_every=50",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    runs = tmp_path_factory.mktemp("recsys")
    proc = cli("run", "configs/recsys.yaml", f"runs_dir={runs}", *SMALL, timeout=600)
    assert "done: report at" in proc.stdout
    return runs / "recsys"


def test_small_run_learns_and_beats_popularity_on_held_out_users(trained):
    stats = json.loads((trained / "preprocess" / "stats.json").read_text())
    assert stats["users"] > 1000 and stats["users_one_interaction"] > 0
    assert (trained / "pretrain" / "items.json").is_file()  # the id mapping is with the model
    m = json.loads((trained / "evaluate" / "metrics.json").read_text())
    assert m["split"] == "test"
    full, sampled = m["full"], m["sampled_100"]
    for protocol in (full, sampled):
        assert set(protocol) == {"sasrec", "popularity", "item_knn"}
        assert {f"{k}@{n}" for k in ("hr", "ndcg") for n in (5, 10, 20)} <= set(protocol["sasrec"])
    assert full["sasrec"]["ndcg@10"] > 1.2 * full["popularity"]["ndcg@10"], full
    assert sampled["sasrec"]["ndcg@10"] > sampled["popularity"]["ndcg@10"], sampled
    vals = [json.loads(x) for x in (trained / "pretrain" / "metrics.jsonl").open() if "val_" in x]
    assert vals[-1]["val_ndcg@10"] > vals[0]["val_ndcg@10"] or len(vals) == 1
    report = (trained / "evaluate" / "report.md").read_text()
    assert "100 sampled negatives" in report and "item-kNN" in report


def test_recommend_ignores_unknown_items_and_excludes_seen(trained):
    model = rec.load_recommender(trained)
    seen = model.items[:3]
    out = rec.recommend(model, [*seen, "no-such-item"], k=5)
    assert len(out["items"]) == 5 and not {r["item"] for r in out["items"]} & set(seen)
    assert len(out["warnings"]) == 1 and "no-such-item" in out["warnings"][0]
    scores = [r["score"] for r in out["items"]]
    assert scores == sorted(scores, reverse=True)
    with_seen = rec.recommend(trained, seen, k=len(model.items))  # from the run folder too
    assert len(with_seen["items"]) == len(model.items) - 3
    every = rec.recommend(model, seen, k=len(model.items), exclude_seen=False)
    assert set(seen) <= {r["item"] for r in every["items"]}
    cold = rec.recommend(model, ["nothing-known"], k=3)
    assert [r["item"] for r in cold["items"]] == model.items[:3] and len(cold["warnings"]) == 2


@pytest.fixture(scope="module")
def server(trained):
    with served(trained) as (base, _):
        yield base


def test_recommend_endpoint_over_http(server, trained):
    items = rec.load_recommender(trained).items
    body = {"items": [items[0], items[5], "no-such-item"], "k": 4}
    r = httpx.post(f"{server}/v1/recommend", json=body, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "recommendation" and out["model"] == "recsys"
    assert len(out["items"]) == 4 and not {x["item"] for x in out["items"]} & {items[0], items[5]}
    assert all(isinstance(x["score"], float) for x in out["items"])
    assert "no-such-item" in out["warnings"][0]
    direct = rec.recommend(rec.load_recommender(trained), body["items"], 4)
    assert [x["item"] for x in out["items"]] == [x["item"] for x in direct["items"]]
    r = httpx.post(f"{server}/v1/recommend", json={**body, "exclude_seen": False, "k": 1000})
    assert items[0] in {x["item"] for x in r.json()["items"]}
    bad = httpx.post(f"{server}/v1/recommend", json={"items": "abc", "k": 0})
    assert bad.status_code == 400 and "error" in bad.json()
    models = httpx.get(f"{server}/v1/models").json()["data"]
    assert models[0]["id"] == "recsys"
