"""Soak (slow suite): 64 concurrent streaming clients for 60 s against a real `modelworks serve`
of a tiny trained run on 127.0.0.1: zero 5xx, every stream complete, server memory flat.

The client loop is the one `benchmarks/serve.py --soak` runs (imported from there, so the
benchmark and this test measure the same thing).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from modelworks.config import load_config
from modelworks.pipeline import run
from tests.conftest import load_benchmark, served, tiny_overrides


@pytest.mark.slow
def test_64_streams_for_60_seconds(tmp_path):
    runs = tmp_path / "runs"
    cfg = load_config(None, tiny_overrides(runs))
    run(cfg)
    overrides = ("serve.max_batch=16", "serve.max_concurrent_requests=128")
    with served(cfg.run_dir, *overrides) as (base, proc):
        bench = load_benchmark("serve")
        ids = [1, 2, 3, 4, 5, 6, 7, 8]
        warm = asyncio.run(bench.soak(base, ids, 16, 64, 10, proc.pid))
        result = asyncio.run(bench.soak(base, ids, 16, 64, 60, proc.pid))
        print({"warm-up": warm, "soak": result})
        assert result["requests"] >= 64
        failures = (result["5xx"], result["errors"], result["dropped_streams"])
        assert failures == (0, 0, 0), result["first_errors"]
        after_warmup, end = warm["server_rss_mb"][-1], result["server_rss_mb"][-1]
        assert abs(end - after_warmup) <= 0.10 * after_warmup, result["server_rss_mb"]
        assert httpx.get(f"{base}/health", timeout=5).status_code == 200
