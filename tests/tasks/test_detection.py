"""Object detection: the built-in digit scenes through collect -> serve, the COCO evaluator, NMS,
box-consistent augmentations, and the COCO / YOLO readers' bad input."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from modelworks.collect.detection import coco_files, digit_scenes, yolo_folders
from modelworks.collect.rows import BadRows
from modelworks.config import load_config
from modelworks.evaluate.detection import coco_metrics
from modelworks.models.boxes import batched_nms, box_iou, nms
from modelworks.pipeline import run
from modelworks.tasks.detection_augment import BoxAugment, warp
from tests.conftest import ROOT, served

STEPS, MAP_50, MAP = 300, 0.85, 0.55  # the slow test: a shortened configs/detection.yaml
TINY = [
    "collect.sources.0.limit=120", "model.widths=[8,16,16]", "model.head_width=16",
    "pretrain.steps=20", "pretrain.batch_size=16", "pretrain.warmup_steps=2",
    "pretrain.eval_every=10", "pretrain.ckpt_every=10", "pretrain.log_every=10", "threads=1",
    "tasks.object_detection.eval_images=8",
]  # fmt: skip


def test_digit_scenes_collect_to_serve_with_a_real_request(tmp_path):
    cfg = load_config(ROOT / "configs" / "detection.yaml",
                      [f"runs_dir={tmp_path / 'runs'}", "name=det", *TINY])  # fmt: skip
    assert run(cfg) == {s: "ran" for s in ("collect", "preprocess", "pretrain", "evaluate")}
    stats = json.loads((cfg.run_dir / "preprocess" / "stats.json").read_text())
    assert stats["counts"]["test"]["images"] == 12 and stats["classes"] == list("0123456789")
    m = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    assert m["split"] == "test" and m["rows"] == 12 and 0 <= m["map"] <= m["map_50"] <= 1
    assert set(m["ap_per_class"]) == set("0123456789") and "baseline_map_50" in m
    report = (cfg.run_dir / "evaluate" / "report.md").read_text()
    assert "sliding-window baseline" in report and "mAP@[.5:.95]" in report
    assert (cfg.run_dir / "evaluate" / "detections.png").is_file()
    assert (cfg.run_dir / "evaluate" / "pr_curves.png").is_file()

    scene = next(digit_scenes(count=1))
    big = Image.open(io.BytesIO(scene["image"])).resize((128, 96))  # not the model's size
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    with served(cfg.run_dir) as (base, _):
        url = f"{base}/v1/images/detect"
        files = {"image": ("scene.png", buf.getvalue(), "image/png")}
        r = httpx.post(url, files=files, data={"score_threshold": "0", "max_detections": "5"},
                       timeout=60)  # fmt: skip
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "det" and body["data"][0]["width"] == 128
        dets = body["data"][0]["detections"]
        assert 1 <= len(dets) <= 5
        assert [d["score"] for d in dets] == sorted((d["score"] for d in dets), reverse=True)
        for d in dets:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= 128 and 0 <= y1 <= y2 <= 96 and d["label"] in "0123456789"
        b64 = base64.b64encode(buf.getvalue()).decode()
        r = httpx.post(url, json={"images": [b64, b64], "score_threshold": 1.0}, timeout=60)
        assert r.status_code == 200 and [len(d["detections"]) for d in r.json()["data"]] == [0, 0]
        r = httpx.post(url, json={"image": b64, "score_threshold": 2}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "score_threshold"
        r = httpx.post(url, json={"image": base64.b64encode(b"no image").decode()}, timeout=30)
        assert r.status_code == 400 and "not a readable image" in r.json()["error"]["message"]

    pytest.importorskip("onnxruntime", reason="pip install -e '.[export]'")
    from modelworks.export import export
    from modelworks.export_onnx import load_onnx, run_onnx
    from modelworks.models.detector import decode
    from modelworks.tasks.object_detection_data import load_split, normalise
    from modelworks.train.checkpoint import load_model

    sess, info = load_onnx(export(cfg.run_dir, tmp_path / "onnx", "onnx"))
    assert info["input"]["name"] == "pixel_values" and info["input"]["shape"][1:] == [1, 64, 64]
    x, _, meta = load_split(cfg.run_dir, "test")
    x = normalise(x[:5], meta)  # another batch size than the export traced
    model = load_model(cfg.run_dir / "pretrain").eval()
    ours, theirs = model.detect(x, 0.0, 20), decode(run_onnx(sess, x), 10, 0.0, 20, 0.6)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-3) and a["labels"].equal(b["labels"])


def test_nms_keeps_the_best_of_each_overlapping_group():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9.0]])
    scores = torch.tensor([0.9, 0.95, 0.5, 0.3])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 0, 2, 3]  # nothing is a duplicate
    labels = torch.tensor([0, 1, 0, 0])  # another class never suppresses
    assert sorted(batched_nms(boxes, scores, labels, 0.5).tolist()) == [0, 1, 2]
    iou = box_iou(boxes[:1], boxes)[0]
    assert iou[0] == 1 and iou[2] == 0 and abs(iou[1] - 81 / 119) < 1e-6


def test_coco_evaluator_scores_perfect_shifted_and_missing_boxes():
    truth = [(np.array([[0, 0, 10, 10], [20, 20, 30, 36]]), np.array([0, 1]))]
    perfect = [(truth[0][0], np.array([0.9, 0.8]), truth[0][1])]
    m = coco_metrics(truth, perfect, ["a", "b"])
    assert m["map"] == pytest.approx(1) and m["ap_per_class"]["b"] == pytest.approx(1)
    shifted = [(truth[0][0] + np.array([0, 0, 5, 0]), np.array([0.9, 0.8]), truth[0][1])]
    m = coco_metrics(truth, shifted, ["a", "b"])  # IoU 0.67 and 0.67: right at .5, not at .75
    assert m["map_50"] == pytest.approx(1) and m["map_75"] == 0 and 0.2 < m["map"] < 0.6
    wrong_class = [(truth[0][0], np.array([0.9, 0.8]), np.array([1, 0]))]
    assert coco_metrics(truth, wrong_class, ["a", "b"])["map_50"] == 0
    assert (
        coco_metrics(truth, [(np.zeros((0, 4)), np.zeros(0), np.zeros(0))], ["a", "b"])["map"] == 0
    )


def _rect_image(box, size=64):
    x = torch.zeros(1, 1, size, size)
    x1, y1, x2, y2 = box
    x[0, 0, y1:y2, x1:x2] = 1
    return x


def _ink_box(img, threshold=0.5):
    ys, xs = torch.nonzero(img[0] > threshold, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


@pytest.mark.parametrize("flip", [False, True])
def test_augmented_boxes_still_bound_the_object(flip):
    aug = BoxAugment(zoom=0.3, shift=0.1, flip=flip, seed=3)
    for trial in range(10):
        aug.reseed(trial)
        x = _rect_image((10, 20, 30, 44))
        t = torch.tensor([[0, 4, 10, 20, 30, 44.0]])
        xa, ta = aug(x, t)
        if not len(ta):
            continue
        assert ta[0, 1] == 4
        ink = _ink_box(xa[0])
        assert all(abs(a - b) <= 1.0 for a, b in zip(ink, ta[0, 2:].tolist(), strict=True))
    # a box pushed mostly outside is dropped, one partly outside is clipped
    x = _rect_image((0, 0, 20, 20))
    t = torch.tensor([[0, 1, 0, 0, 20, 20.0]])
    one = torch.ones(1)
    _, gone = warp(x, t, one, one, torch.tensor([-15.0]), torch.tensor([0.0]))
    assert len(gone) == 0
    _, kept = warp(x, t, one, one, torch.tensor([-5.0]), torch.tensor([0.0]))
    assert kept[0, 2:].tolist() == [0, 0, 15, 20]


def _png(size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size).save(buf, format="PNG")
    return buf.getvalue()


def test_coco_bad_input_is_clipped_or_skipped_and_counted(tmp_path):
    (tmp_path / "a.png").write_bytes(_png((32, 32)))
    (tmp_path / "b.png").write_bytes(_png((48, 40)))  # a mixed size is kept
    doc = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "categories": [{"id": 7, "name": "cat"}],
        "annotations": [
            {"image_id": 1, "category_id": 7, "bbox": [2, 2, 10, 10]},
            {"image_id": 1, "category_id": 7, "bbox": [25, 25, 20, 20]},  # clipped
            {"image_id": 1, "category_id": 7, "bbox": [40, 40, 5, 5]},  # outside: skipped
            {"image_id": 2, "category_id": 7, "bbox": [1, 1, -3, 4]},  # negative size
            {"image_id": 9, "category_id": 7, "bbox": [1, 1, 3, 4]},  # unknown image
            {"image_id": 2, "category_id": 3, "bbox": [1, 1, 3, 4]},  # unknown category
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    bad, problems = BadRows("collect.sources.0", 10), []
    recs = list(coco_files([str(tmp_path / "ann.json")], "", "collect.sources.0", bad, problems))
    assert [(r["width"], r["height"]) for r in recs] == [(32, 32), (48, 40)]
    assert [b["bbox"] for b in json.loads(recs[0]["boxes"])] == [[2, 2, 10, 10], [25, 25, 7, 7]]
    assert json.loads(recs[1]["boxes"]) == []
    assert bad.counts == {"box outside the image": 1, "box with a zero or negative size": 1,
                          "annotation for an unknown image": 1,
                          "annotation with an unknown category": 1}  # fmt: skip
    assert len(problems) == 1 and "clipped" in problems[0] and "ann.json:1" in problems[0]
    with pytest.raises(ValueError, match="rows are bad"):
        _strict(tmp_path)  # 4 bad of 6 rows: past a 10% limit the stage stops


def _strict(tmp_path):
    bad = BadRows("collect.sources.0", 0.1)
    list(coco_files([str(tmp_path / "ann.json")], "", "collect.sources.0", bad, []))
    bad.check()


def test_yolo_labels_wrong_field_counts_are_counted(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(_png((40, 20)))
    lines = ["0 0.5 0.5 0.5 0.5", "1 0.5 0.5", "2 0.1 0.1 0.2 0.2", "1 0.95 0.5 0.2 0.4 7",
             "1 0.95 0.5 0.2 0.4"]  # fmt: skip
    (tmp_path / "labels" / "a.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "labels" / "classes.txt").write_text("cat\ndog\n")
    bad, problems = BadRows("collect.sources.0", 10), []
    recs = list(yolo_folders([str(tmp_path / "images")], "collect.sources.0", bad, problems))
    boxes = json.loads(recs[0]["boxes"])
    assert boxes[0] == {"bbox": [10.0, 5.0, 20.0, 10.0], "label": "cat"}
    assert boxes[1]["label"] == "dog" and boxes[1]["bbox"][0] + boxes[1]["bbox"][2] == 40  # clipped
    assert bad.counts == {"YOLO line without 5 fields": 2, "YOLO class without a name": 1}
    assert len(problems) == 1


def test_mixed_sizes_are_resized_with_their_boxes(tmp_path):
    (tmp_path / "a.png").write_bytes(_png((32, 32)))
    (tmp_path / "b.png").write_bytes(_png((64, 32)))
    doc = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
           "categories": [{"id": 1, "name": "x"}],
           "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 16, 16]},
                           {"image_id": 2, "category_id": 1, "bbox": [32, 0, 32, 16]}]}  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    cfg = load_config(None, [f"runs_dir={tmp_path / 'runs'}", "task=object_detection",
                             "collect.sources.0.type=coco",
                             f"collect.sources.0.paths=['{tmp_path / 'ann.json'}']",
                             "tasks.object_detection.image_size=16",
                             "preprocess.val_fraction=0.001",
                             "preprocess.test_fraction=0.001"])  # fmt: skip
    from modelworks.collect import collect
    from modelworks.preprocess import preprocess

    collect(cfg)
    preprocess(cfg)
    stats = json.loads((cfg.run_dir / "preprocess" / "stats.json").read_text())
    assert stats["image_sizes"] == {"32x32": 1, "64x32": 1} and stats["other_sizes"] == 1
    from modelworks.tasks.object_detection_data import load_split

    # both images, whichever split their ids hash to (a 0.001 draw still takes one now and then)
    parts = [load_split(cfg.run_dir, split) for split in ("train", "val", "test")]
    assert sum(len(x) for x, _, _ in parts) == 2
    assert all(x.shape[1:] == (1, 16, 16) for x, _, _ in parts)
    boxes = torch.cat([b for _, b, _ in parts])
    assert sorted(boxes[:, 2:].tolist()) == [[0, 0, 8, 8], [8, 0, 16, 8]]


@pytest.mark.slow
def test_detector_beats_the_sliding_window_baseline_on_held_out_scenes(tmp_path):
    """A shortened configs/detection.yaml (STEPS steps, about 2 minutes on 2 quiet cores): COCO
    mAP on the held-out test scenes, whose digits no training scene used."""
    cfg = load_config(ROOT / "configs" / "detection.yaml",
                      [f"runs_dir={tmp_path / 'runs'}", f"pretrain.steps={STEPS}",
                       f"pretrain.eval_every={STEPS}", f"pretrain.ckpt_every={STEPS}"])  # fmt: skip
    run(cfg)
    m = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    assert m["split"] == "test" and m["rows"] == 200
    assert m["map_50"] >= MAP_50 and m["map"] >= MAP, m
    assert m["map_50"] >= m["baseline_map_50"] + 0.3 and m["map"] >= 2 * m["baseline_map"], m
