"""The seed's MLP and custom models through the whole lifecycle on real image data."""

import gzip
import json
import textwrap

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from modelworks.config import ConfigError, load_config
from modelworks.models.registry import ModelError
from modelworks.pipeline import run
from tests.conftest import ROOT


def _cfg(tmp_path, *extra):
    return load_config(ROOT / "configs" / "mlp.yaml", [f"runs_dir={tmp_path / 'runs'}", *extra])


def test_mlp_reaches_95_percent_on_held_out_digits(tmp_path):
    cfg = _cfg(tmp_path)
    run(cfg)
    m = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    assert m["split"] == "test" and m["examples"] > 300
    assert m["accuracy"] >= 0.95, m["accuracy"]
    assert m["accuracy"] > m["majority_baseline_accuracy"] + 0.5
    assert (cfg.run_dir / "evaluate" / "confusion.png").is_file()


def _write_digit_files(root, n=400):
    """Real digits as PNG files in class folders (28x28, some 36x36), a corrupt file, odd modes."""
    d = load_digits()
    for i in range(n):
        size = (
            36 if i % 5 == 0 else 28
        )  # mixed sizes are resized to tasks.image_classification.image_size
        img = Image.fromarray(np.uint8(d.images[i] * 255 / 16)).resize((size, size))
        if i % 7 == 0:
            img = img.convert("RGB")  # mixed modes are converted
        folder = root / str(d.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i}.png")
    (root / "3" / "broken.png").write_bytes(b"not an image at all")


def test_image_folder_of_28x28_files(tmp_path):
    _write_digit_files(tmp_path / "digits")
    cfg = _cfg(
        tmp_path,
        "collect.sources.0.type=image_folder",
        f"collect.sources.0.paths=['{tmp_path / 'digits'}']",
        "pretrain.steps=400",
    )
    run(cfg)
    stats = json.loads((cfg.run_dir / "preprocess" / "stats.json").read_text())
    assert sum(stats["skipped"].values()) == 1 and sum(stats["images"].values()) == 400
    m = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    assert m["accuracy"] > 0.8, m


def _idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))


def test_idx_files_are_read(tmp_path):
    d = load_digits()
    images = np.stack(
        [
            np.asarray(Image.fromarray(np.uint8(x * 255 / 16)).resize((28, 28)))
            for x in d.images[:300]
        ]
    )
    _idx(tmp_path / "img.gz", images)
    _idx(tmp_path / "lbl.gz", d.target[:300])
    cfg = _cfg(
        tmp_path,
        "collect.sources.0.type=idx",
        f"collect.sources.0.paths=['{tmp_path / 'img.gz'}', '{tmp_path / 'lbl.gz'}']",
        "pretrain.steps=50",
    )
    run(cfg)
    stats = json.loads((cfg.run_dir / "preprocess" / "stats.json").read_text())
    assert sum(stats["images"].values()) == 300 and stats["classes"] == 10


def test_custom_model_class_trains(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent("""
        from torch import nn

        class TinyCNN(nn.Module):
            def __init__(self, width: int = 8, n_classes: int = 10):
                super().__init__()
                self.net = nn.Sequential(
                    nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                    nn.Flatten(), nn.Linear(width * 7 * 7, n_classes))

            def forward(self, x):
                return self.net(x)
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = _cfg(
        tmp_path, "model={'class': 'my_models:TinyCNN', 'args': {'width': 8}}", "pretrain.steps=300"
    )
    assert cfg.model.name == "custom"
    run(cfg)
    m = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    assert m["accuracy"] > 0.8, m
    saved = json.loads((cfg.run_dir / "pretrain" / "config.json").read_text())
    assert saved == {"name": "custom", "config": {"cls": "my_models:TinyCNN", "args": {"width": 8}}}


def test_custom_class_that_cannot_be_imported(tmp_path):
    cfg = _cfg(tmp_path, "model={'class': 'no_such_pkg.mod:Net'}")
    run_cfg = cfg.model_copy(deep=True)
    with pytest.raises(ModelError, match="model.class 'no_such_pkg.mod:Net' cannot be imported"):
        run(run_cfg)


def test_mlp_input_size_must_fit_the_data(tmp_path):
    cfg = _cfg(tmp_path, "tasks.image_classification.image_size=8", "pretrain.steps=5")
    with pytest.raises(ConfigError, match="model.in_features=784 but the data has 64"):
        run(cfg)


def test_single_class_dataset_is_refused(tmp_path):
    root = tmp_path / "one"
    (root / "only").mkdir(parents=True)
    for i in range(20):
        Image.new("L", (28, 28), color=i * 10).save(root / "only" / f"{i}.png")
    cfg = _cfg(
        tmp_path, "collect.sources.0.type=image_folder", f"collect.sources.0.paths=['{root}']"
    )
    with pytest.raises(Exception, match=r"classification needs 2\+"):
        run(cfg)
