"""More training windows (tasks.user_behaviour.train_windows): cutoffs horizon_days apart."""

from __future__ import annotations

import numpy as np
import pytest

from modelworks.collect import collect
from modelworks.errors import BehaviourDataError
from modelworks.preprocess import preprocess
from modelworks.tasks.user_behaviour import training_windows
from modelworks.tasks.user_behaviour_data import load_windows
from tests.tasks.test_user_behaviour import _cfg


def test_training_windows_step_back_by_the_horizon_and_stop_before_the_log(tmp_path):
    sim = ["collect.sources.0.type=shop_simulator", "collect.sources.0.users=300"]
    cfg = _cfg(tmp_path, *sim, "tasks.user_behaviour.train_windows=3")
    collect(cfg)
    windows = preprocess(cfg)["summary"]["windows"]
    tensors, users, _ = load_windows(cfg.run_dir)
    assert training_windows(tensors) == ["train", "train1", "train2"]
    cuts = [np.datetime64(windows[w]["cutoff"]) for w in ("test", "train", "train1", "train2")]
    assert set(np.diff(cuts).tolist()) == {-np.timedelta64(14 * 86400_000_000, "us")}
    # each window: one row per user with history before its cutoff, fewer further back
    sizes = [len(users[w]) for w in ("train", "train1", "train2")]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] > 0
    for w in ("train1", "train2"):
        assert len(tensors[f"{w}_y"]) == len(tensors[f"{w}_x"]) == len(tensors[f"{w}_rfm"])
    with pytest.raises(BehaviourDataError, match="train_windows=9: the earliest training cutoff"):
        preprocess(_cfg(tmp_path, *sim, "tasks.user_behaviour.train_windows=9"))
