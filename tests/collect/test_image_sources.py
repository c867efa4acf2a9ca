"""Image sources from tables (path + label) and NumPy arrays; per-class errors in the report."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from modelworks.collect import CollectError, collect
from modelworks.config import load_config
from modelworks.pipeline import run
from modelworks.preprocess import preprocess
from modelworks.tasks.image_classification import per_class_errors, plot_misclassified
from tests.conftest import ROOT, cli


def _cfg(tmp_path, *extra):
    return load_config(ROOT / "configs" / "mlp.yaml", [f"runs_dir={tmp_path / 'runs'}", *extra])


def _digits(n):
    d = load_digits()
    return np.uint8(np.round(d.images[:n] * 255 / 16)), d.target[:n]


def _images(cfg):
    return pq.read_table(cfg.run_dir / "collect" / "images.parquet").to_pylist()


def _write_table_set(folder, n=120):
    """PNG files under folder/img plus a corrupt one; rows list relative paths."""
    images, labels = _digits(n)
    (folder / "img").mkdir(parents=True)
    rows = []
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(img).save(folder / "img" / f"{i}.png")
        rows.append({"file": f"img/{i}.png", "digit": f"d{label}"})
    (folder / "img" / "broken.png").write_bytes(b"this is not a PNG")
    rows.append({"file": "img/broken.png", "digit": "d1"})
    rows.append({"file": "img/missing.png", "digit": "d2"})
    return rows, images, labels


def test_image_table_csv_relative_paths_skips_missing_and_corrupt(tmp_path):
    rows, images, labels = _write_table_set(tmp_path / "set")
    lines = ["path,label"] + [f"{r['file']},{r['digit']}" for r in rows]
    (tmp_path / "set" / "labels.csv").write_text("\n".join(lines) + "\n")
    cfg = _cfg(
        tmp_path,
        "collect.sources.0.type=image_table",
        f"collect.sources.0.paths=['{tmp_path / 'set' / '*.csv'}']",
    )
    manifest = collect(cfg)
    assert manifest["summary"]["images"] == 121  # 120 digits + the corrupt file; missing skipped
    # a listed image that does not exist is a bad row: skipped, counted under its reason
    bad = manifest["summary"]["bad_rows"]["collect.sources.0"]
    assert bad["bad"] == 1 and bad["rows"] == 122
    missing = bad["reasons"]["image file missing"]
    assert missing["count"] == 1 and "labels.csv:123 (" in missing["first"][0]
    assert "missing.png does not exist" in missing["first"][0]
    got = _images(cfg)
    first = np.asarray(Image.open(io.BytesIO(got[0]["image"])))
    assert np.array_equal(first, images[0]) and got[0]["label"] == f"d{labels[0]}"
    preprocess(cfg)
    stats = json.loads((cfg.run_dir / "preprocess" / "stats.json").read_text())
    assert sum(stats["skipped"].values()) == 1 and sum(stats["images"].values()) == 120
    meta = json.loads((cfg.run_dir / "preprocess" / "labels.json").read_text())
    assert meta["classes"] == sorted({f"d{y}" for y in labels})


def test_image_table_parquet_custom_columns_and_missing_column(tmp_path):
    rows, _, labels = _write_table_set(tmp_path / "set", n=40)
    pq.write_table(pa.Table.from_pylist(rows[:40]), tmp_path / "set" / "list.parquet")
    table = str(tmp_path / "set" / "list.parquet")
    cfg = _cfg(
        tmp_path,
        "collect.sources.0.type=image_table",
        f"collect.sources.0.paths=['{table}']",
        "collect.sources.0.path_field=file",
        "collect.sources.0.label_field=digit",
    )
    collect(cfg)
    got = _images(cfg)
    assert [r["label"] for r in got] == [f"d{y}" for y in labels]
    assert got[5]["id"] == str(tmp_path / "set" / "img" / "5.png")

    bad = _cfg(
        tmp_path,
        "name=bad",
        "collect.sources.0.type=image_table",
        f"collect.sources.0.paths=['{table}']",
        "collect.sources.0.path_field=file",
    )
    with pytest.raises(CollectError) as e:
        collect(bad)
    msg = str(e.value)
    assert "\n" not in msg and "list.parquet" in msg and "no column 'label'" in msg
    assert "collect.sources.0.label_field" in msg


def test_npz_float_grayscale_default_keys(tmp_path):
    images, labels = _digits(150)
    np.savez(tmp_path / "digits.npz", x=images.astype(np.float32) / 255, y=labels)
    cfg = _cfg(
        tmp_path, "collect.sources.0.type=npz", f"collect.sources.0.paths=['{tmp_path}/*.npz']"
    )
    assert collect(cfg)["summary"]["images"] == 150
    got = _images(cfg)
    back = np.asarray(Image.open(io.BytesIO(got[7]["image"])))
    assert back.shape == (8, 8) and np.abs(back.astype(int) - images[7]).max() <= 1
    assert [r["label"] for r in got] == [str(y) for y in labels]
    preprocess(cfg)
    stats = json.loads((cfg.run_dir / "preprocess" / "stats.json").read_text())
    assert stats["classes"] == 10 and sum(stats["images"].values()) == 150


def test_npz_rgb_uint8_named_keys_and_errors(tmp_path):
    images, labels = _digits(30)
    rgb = np.stack([images, images // 2, 255 - images], axis=-1)  # (N, 8, 8, 3)
    names = np.array([f"class-{y}" for y in labels])
    np.savez_compressed(tmp_path / "a.npz", images=rgb, labels=names, pix=rgb)
    cfg = _cfg(
        tmp_path, "collect.sources.0.type=npz", f"collect.sources.0.paths=['{tmp_path / 'a.npz'}']"
    )
    collect(cfg)
    got = _images(cfg)
    back = np.asarray(Image.open(io.BytesIO(got[3]["image"])))
    assert back.shape == (8, 8, 3) and np.array_equal(back, rgb[3])
    assert got[3]["label"] == f"class-{labels[3]}"

    def fails(*extra):
        bad = _cfg(tmp_path, "name=bad", "collect.sources.0.type=npz", *extra)
        with pytest.raises(CollectError) as e:
            collect(bad)
        assert "\n" not in str(e.value)
        return str(e.value)

    src = f"collect.sources.0.paths=['{tmp_path / 'a.npz'}']"
    msg = fails(src, "collect.sources.0.array_keys=[pix, target]")
    assert "a.npz" in msg and "no array 'target'" in msg and "array_keys" in msg
    np.savez(tmp_path / "b.npz", data=images, target=labels)
    msg = fails(f"collect.sources.0.paths=['{tmp_path / 'b.npz'}']")
    assert "b.npz" in msg and "no x/y or images/labels" in msg
    np.savez(tmp_path / "c.npz", x=images.reshape(30, -1), y=labels)
    assert "need (N, H, W)" in fails(f"collect.sources.0.paths=['{tmp_path / 'c.npz'}']")
    np.savez(tmp_path / "d.npz", x=images, y=labels[:10])
    assert "30 images but labels" in fails(f"collect.sources.0.paths=['{tmp_path / 'd.npz'}']")
    (tmp_path / "e.npz").write_bytes(b"not a zip")
    assert "not a readable .npz" in fails(f"collect.sources.0.paths=['{tmp_path / 'e.npz'}']")


def test_per_class_errors_table():
    cm = np.array([[5, 1, 0], [0, 4, 0], [3, 2, 1]])
    table, summary = per_class_errors(cm, ["a", "b", "c"])
    assert summary == {"total": 6, "per_class": {"a": 1, "b": 0, "c": 5}}
    lines = table.splitlines()
    assert lines[2] == "| a | 6 | 1 | 0.167 | b (1) |"
    assert lines[3] == "| b | 4 | 0 | 0.000 | - |"
    assert lines[4] == "| c | 6 | 5 | 0.833 | a (3) |"


def test_misclassified_grid_png(tmp_path):
    import torch

    raw = torch.randint(0, 256, (40, 1, 12, 12), dtype=torch.uint8)
    y = np.arange(40) % 3
    pred = y.copy()
    pred[::2] = (y[::2] + 1) % 3  # 20 wrong; the grid shows 16
    assert plot_misclassified(raw, y, pred, ["a", "b", "c"], tmp_path / "m.png") == 16
    with Image.open(tmp_path / "m.png") as img:
        assert img.format == "PNG" and img.size[1] > img.size[0] * 0.9  # a 4 x 4 grid
    rgb = torch.randint(0, 256, (3, 3, 12, 12), dtype=torch.uint8)
    shown = plot_misclassified(rgb, np.array([0, 1, 2]), np.array([1, 1, 2]), list("abc"),
                               tmp_path / "one.png")  # fmt: skip
    assert shown == 1 and (tmp_path / "one.png").stat().st_size > 0


def test_report_has_per_class_errors_and_misclassified_images(tmp_path):
    cfg = _cfg(tmp_path, "pretrain.steps=40", "pretrain.eval_every=20", "pretrain.ckpt_every=40")
    run(cfg)
    ev = cfg.run_dir / "evaluate"
    m = json.loads((ev / "metrics.json").read_text())
    cm = np.array(m["confusion_matrix"])
    wrong = int(cm.sum() - np.trace(cm))
    assert wrong > 0 and m["per_class_errors"]["total"] == wrong
    assert m["per_class_errors"]["per_class"] == {
        c: int(cm[i].sum() - cm[i, i]) for i, c in enumerate(m["classes"])
    }
    report = (ev / "report.md").read_text()
    assert "Per-class errors" in report and "most often predicted as" in report
    assert "misclassified.png" in report
    with Image.open(ev / "misclassified.png") as img:
        assert img.format == "PNG"


def test_single_class_npz_fails_at_preprocess_with_one_line(tmp_path):
    images, _ = _digits(40)
    np.savez(tmp_path / "one.npz", x=images, y=np.full(40, 7))
    args = [
        str(ROOT / "configs" / "mlp.yaml"),
        f"runs_dir={tmp_path / 'runs'}",
        "collect.sources.0.type=npz",
        f"collect.sources.0.paths=['{tmp_path / 'one.npz'}']",
    ]
    assert cli("collect", *args).returncode == 0
    proc = cli("preprocess", *args, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.strip().splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "images.parquet" in lines[0] and "1 class(es) ['7']" in lines[0]
    assert "classification needs 2+" in lines[0]
    assert not (tmp_path / "runs" / "mlp-digits" / "preprocess").exists()
