"""image_generation from collect to serve: a tiny run on the built-in digits, its report, and a
real HTTP server answering /v1/images/generations in OpenAI's shape; the slow test holds the
quality bar (class accuracy of guided samples, FID against the Gaussian baseline)."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from modelworks.config import ConfigError, load_config
from modelworks.pipeline import run
from tests.conftest import ROOT, served

TINY = [
    "threads=1", "collect.sources.0.limit=600",
    "tasks.image_generation.judge_steps=40", "tasks.image_generation.val_sample_steps=2",
    "tasks.image_generation.sample_steps=2", "tasks.image_generation.eval_step_counts=[1, 2]",
    "tasks.image_generation.eval_guidance_scales=[1, 2]",
    "tasks.image_generation.samples_per_class=2",
    "model.base_width=16", "model.blocks_per_level=1",
    "pretrain.steps=30", "pretrain.batch_size=32", "pretrain.warmup_steps=5",
    "pretrain.eval_every=15", "pretrain.ckpt_every=15", "pretrain.log_every=5",
]  # fmt: skip


def _cfg(tmp_path, *extra):
    runs = f"runs_dir={tmp_path / 'runs'}"
    return load_config(ROOT / "configs" / "generation.yaml", [runs, *extra])


def _png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_a_tiny_generation_run_is_measured_and_served_in_openai_shape(tmp_path):
    cfg = _cfg(tmp_path, *TINY)
    run(cfg)
    stats = json.loads((cfg.run_dir / "preprocess" / "stats.json").read_text())
    assert stats["judge"]["test_accuracy"] > 0.5  # the judge learned something on held-out data
    m = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    assert m["split"] == "test" and m["rows"] > 60
    for key in ("fid", "gaussian_fid", "real_fid", "class_accuracy", "unguided_fid"):
        assert m[key] >= 0, key
    assert m["real_fid"] < m["fid"]  # 30 steps: the real held-out images are the floor
    assert set(m["per_step_count"]) == {"1", "2"} and set(m["per_guidance_scale"]) == {"1", "2"}
    report = (cfg.run_dir / "evaluate" / "report.md").read_text()
    for heading in ("per-class Gaussian (baseline)", "Sampler step counts", "Guidance scales"):
        assert heading in report, heading
    for png in ("samples.png", "progress.png", "fid.png", "nearest.png"):
        assert (cfg.run_dir / "evaluate" / png).is_file(), png
    assert len(list((cfg.run_dir / "pretrain" / "progress").glob("step_*.npy"))) == 2

    with served(cfg.run_dir, "threads=1") as (base, _):
        body = {"prompt": "3", "n": 2, "size": "32x32", "response_format": "b64_json", "seed": 7}
        r = httpx.post(f"{base}/v1/images/generations", json=body, timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        assert isinstance(out["created"], int) and len(out["data"]) == 2
        assert out["data"][0]["revised_prompt"] == "3"
        img = _png(out["data"][0]["b64_json"])
        assert img.size == (32, 32) and img.mode == "L"
        again = httpx.post(f"{base}/v1/images/generations", json=body, timeout=60).json()
        assert again["data"] == out["data"]  # same seed, same images
        native = httpx.post(f"{base}/v1/images/generations", json={"prompt": "7"}, timeout=60)
        assert _png(native.json()["data"][0]["b64_json"]).size == (8, 8)

        r = httpx.post(f"{base}/v1/images/generations", json={"prompt": "cat"}, timeout=60)
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["param"] == "prompt" and "known: 0, 1, 2" in err["message"], err
        for bad, param in (
            ({"prompt": "3", "size": "20x30"}, "size"),
            ({"prompt": "3", "response_format": "url"}, "response_format"),
            ({"prompt": "3", "n": 0}, "n"),
        ):
            r = httpx.post(f"{base}/v1/images/generations", json=bad, timeout=60)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        models = httpx.get(f"{base}/v1/models").json()["data"]
        assert models[0]["task"] == "image_generation" and len(models[0]["classes"]) == 10


def test_options_are_checked_before_any_stage_runs(tmp_path):
    from modelworks.tasks import check_task_config

    with pytest.raises(ConfigError, match="tasks.image_generation.sampler"):
        check_task_config(_cfg(tmp_path, "tasks.image_generation.sampler=ddpm"))
    with pytest.raises(ConfigError, match="did you mean 'tasks.image_generation.sample_steps'"):
        check_task_config(_cfg(tmp_path, "tasks.image_generation.sample_step=4"))


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~2 min on 2 quiet cores; 5 min under a load of 13
def test_guided_digits_are_recognisable_and_beat_the_gaussian_baseline(tmp_path):
    """500 steps of configs/generation.yaml's model on the digits (its best checkpoint is
    usually step 500 of 1000)."""
    cfg = _cfg(
        tmp_path, "pretrain.steps=500", "pretrain.eval_every=250", "pretrain.ckpt_every=250",
        "tasks.image_generation.eval_step_counts=[8]",
        "tasks.image_generation.eval_guidance_scales=[2]",
    )  # fmt: skip
    run(cfg)
    m = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    assert m["split"] == "test" and m["rows"] > 300  # held-out images, never trained on
    assert m["class_accuracy"] >= 0.9, m["class_accuracy"]
    assert m["per_guidance_scale"]["2"]["class_accuracy"] >= 0.9, m["per_guidance_scale"]
    assert m["fid"] <= 0.6 * m["gaussian_fid"], (m["fid"], m["gaussian_fid"])
    # not a copy machine: samples sit about as far from the training images as held-out ones
    assert m["nearest_train_rms_median"] >= 0.7 * m["real_nearest_train_rms_median"], m
    assert m["closer_than_any_real_share"] < 0.05, m
