"""Predefined splits: sources that name their split land exactly there; the random draw fills
only what the sources left unassigned; bad split names and unseen test labels are one line."""

import gzip
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load_file
from sklearn.datasets import load_digits

from modelworks.collect import CollectError, collect
from modelworks.config import ConfigError, load_config
from modelworks.errors import DataError, ImageDataError
from modelworks.preprocess import preprocess
from modelworks.splits import assign
from tests.conftest import ROOT


def write_idx(path, array: np.ndarray) -> None:
    """An unsigned-byte IDX file (MNIST's format), gzip-compressed like the published ones."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def fashion_like(folder, n_train=80, n_test=30):
    """Two IDX pairs shaped as Fashion-MNIST's: train-* and t10k-*, 28x28 images."""
    d = load_digits()
    images = np.uint8(np.round(d.images * 255 / 16)).repeat(4, 1).repeat(4, 2)[:, 2:30, 2:30]
    folder.mkdir(parents=True, exist_ok=True)
    parts = {"train": slice(0, n_train), "t10k": slice(n_train, n_train + n_test)}
    for name, sl in parts.items():
        write_idx(folder / f"{name}-images-idx3-ubyte.gz", images[sl])
        write_idx(folder / f"{name}-labels-idx1-ubyte.gz", d.target[sl])
    return images[parts["t10k"]], d.target[parts["t10k"]]


def idx_config(tmp_path, data, *extra):
    sources = [
        {"type": "idx", "split": split, "paths": [
            str(data / f"{name}-images-idx3-ubyte.gz"), str(data / f"{name}-labels-idx1-ubyte.gz")
        ]}
        for name, split in (("train", "train"), ("t10k", "test"))
    ]  # fmt: skip
    return load_config(
        ROOT / "configs" / "mlp.yaml",
        [f"runs_dir={tmp_path / 'runs'}", f"collect.sources={json.dumps(sources)}", *extra],
    )


def test_idx_test_source_is_exactly_the_test_split(tmp_path):
    test_images, test_labels = fashion_like(tmp_path / "data")
    cfg = idx_config(tmp_path, tmp_path / "data")
    assert collect(cfg)["summary"]["splits"] == {"test": 30, "train": 80}
    stats = preprocess(cfg)["summary"]
    data = load_file(str(cfg.run_dir / "preprocess" / "data.safetensors"))
    classes = json.loads((cfg.run_dir / "preprocess" / "labels.json").read_text())["classes"]
    # exactly the t10k images, in order, none drawn from train, none of them in train or val
    assert np.array_equal(data["test_x"][:, 0], test_images)
    assert [classes[i] for i in data["test_y"]] == [str(t) for t in test_labels]
    assert len(data["train_y"]) + len(data["val_y"]) == 80 and len(data["val_y"]) > 0
    test = stats["splits"]["test"]
    assert test["rows"] == 30
    assert test["from"] == {f"{tmp_path / 'data' / 't10k-images-idx3-ubyte.gz'} (split: test)": 30}
    assert list(stats["splits"]["val"]["from"]) == ["random draw (val_fraction=0.1)"]
    assert stats["test_overlap"]["identical_to_train"] == 0


def table_config(tmp_path, csv_text, *extra):
    (tmp_path / "t.csv").write_text(csv_text)
    return load_config(
        None,
        [
            f"runs_dir={tmp_path / 'runs'}",
            "task=text_classification",
            "model.name=encoder",
            "preprocess.vocab_size=280",
            "collect.sources.0.type=table",
            f"collect.sources.0.paths=['{tmp_path / 't.csv'}']",
            "collect.sources.0.split_field=part",
            *extra,
        ],
    )


def _rows(n_train=40):
    words = ["good film", "bad plot", "great cast", "awful pacing"]
    rows = [(f"{words[i % 4]} number {i}", "pos" if i % 2 == 0 else "neg") for i in range(60)]
    part = ["train"] * n_train + ["val"] * 8 + ["test"] * 12
    return [(t, label, p) for (t, label), p in zip(rows, part, strict=True)]


def test_split_column_lands_records_exactly(tmp_path):
    rows = _rows()
    rows[3] = (rows[3][0], rows[3][1], "")  # unassigned: goes to train (val and test are named)
    rows[50] = (rows[50][0], rows[50][1], "validation")  # Hugging Face's name for val
    csv = "text,label,part\n" + "".join(f"{t},{label},{p}\n" for t, label, p in rows)
    cfg = table_config(tmp_path, csv)
    collect(cfg)
    stats = preprocess(cfg)["summary"]
    got = {
        s: sorted(pq.read_table(cfg.run_dir / "preprocess" / f"{s}.parquet")["text"].to_pylist())
        for s in ("train", "val", "test")
    }
    want = {s: sorted(t for t, _, p in rows if (p or "train") == s) for s in ("train", "test")}
    want["val"] = sorted(t for t, _, p in rows if p in ("val", "validation"))
    assert got == want
    assert stats["splits"]["test"]["rows"] == 11 and stats["splits"]["val"]["rows"] == 9
    assert stats["test_overlap"]["test_rows"] == 11


def test_unnamed_split_is_drawn_from_train_only(tmp_path):
    rows = [(t, label, "test" if p == "test" else "train") for t, label, p in _rows()]
    csv = "text,label,part\n" + "".join(f"{t},{label},{p}\n" for t, label, p in rows)
    cfg = table_config(tmp_path, csv, "preprocess.val_fraction=0.25")
    collect(cfg)
    stats = preprocess(cfg)["summary"]
    assert stats["split_sizes"] == {"train": 36, "val": 12, "test": 12}
    assert list(stats["splits"]["val"]["from"]) == ["random draw (val_fraction=0.25)"]


def test_nothing_named_is_the_former_random_split():
    order = np.random.default_rng(7).permutation(np.arange(50))
    parts = assign([None] * 50, 0.1, 0.2, seed=7)
    assert parts["test"] == order[:10].tolist() and parts["val"] == order[10:15].tolist()
    assert parts["train"] == order[15:].tolist()


def test_unknown_split_name_on_a_source_is_one_line(tmp_path):
    fashion_like(tmp_path / "data")
    cfg = idx_config(tmp_path, tmp_path / "data", "collect.sources.1.split=testing")
    with pytest.raises(CollectError) as e:
        collect(cfg)
    assert str(e.value) == (
        "collect.sources.1.split: 'testing' is not a split; use train, val or test "
        "(validation is read as val)"
    )


def test_split_column_value_outside_train_val_test(tmp_path):
    rows = _rows()
    rows[5] = (rows[5][0], rows[5][1], "holdout")
    csv = "text,label,part\n" + "".join(f"{t},{label},{p}\n" for t, label, p in rows)
    with pytest.raises(CollectError) as e:
        collect(table_config(tmp_path, csv))
    msg = str(e.value)
    assert "\n" not in msg and "collect.sources.0.split_field 'part'" in msg
    assert f"{tmp_path / 't.csv'}:7" in msg and "'holdout' is not a split" in msg


def test_test_label_never_seen_in_training(tmp_path):
    rows = _rows()
    rows[55] = (rows[55][0], "neutral", "test")
    csv = "text,label,part\n" + "".join(f"{t},{label},{p}\n" for t, label, p in rows)
    cfg = table_config(tmp_path, csv)
    collect(cfg)
    with pytest.raises(DataError) as e:
        preprocess(cfg)
    assert str(e.value).startswith(f"{tmp_path / 't.csv'}: label 'neutral' (1 example(s))")
    assert "test split" in str(e.value)


def test_image_test_label_never_seen_in_training(tmp_path):
    fashion_like(tmp_path / "data")
    labels = np.full(30, 11)  # a class the train source never has
    write_idx(tmp_path / "data" / "t10k-labels-idx1-ubyte.gz", labels)
    cfg = idx_config(tmp_path, tmp_path / "data")
    collect(cfg)
    with pytest.raises(ImageDataError) as e:
        preprocess(cfg)
    assert str(e.value).startswith(f"{tmp_path / 'data' / 't10k-images-idx3-ubyte.gz'}: label '11'")


def test_recommendation_refuses_a_split(tmp_path):
    cfg = load_config(
        ROOT / "configs" / "recsys.yaml",
        [f"runs_dir={tmp_path / 'runs'}", "collect.sources.0.split=test"],
    )
    with pytest.raises(CollectError, match=r"collect.sources.0.split: 'test': recommendation"):
        collect(cfg)


def test_fashion_mnist_config_names_its_test_files():
    cfg = load_config([ROOT / "configs" / "mlp.yaml", ROOT / "configs" / "fashion_mnist.yaml"])
    got = [(s.type, s.split, s.paths[0].rsplit("/", 1)[-1]) for s in cfg.collect.sources]
    assert got == [
        ("idx", "train", "train-images-idx3-ubyte.gz"),
        ("idx", "test", "t10k-images-idx3-ubyte.gz"),
    ]
    assert cfg.model.name == "mlp" and cfg.preprocess.test_fraction == 0.2  # never drawn: named


def test_hf_source_keeps_the_datasets_own_split_names(tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    folder.mkdir()
    rows = _rows()
    for split, name in (("train", "train"), ("val", "validation"), ("test", "test")):
        lines = [json.dumps({"sentence": t, "label": y}) for t, y, p in rows if p == split]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    sources = [
        {"type": "table", "dataset": str(folder), "split": split, "text_field": "sentence"}
        for split in ("train", "validation", "test")
    ]
    cfg = load_config(
        None,
        [f"runs_dir={tmp_path / 'runs'}", "task=text_classification", "model.name=encoder",
         "preprocess.vocab_size=280", f"collect.sources={json.dumps(sources)}"],
    )  # fmt: skip
    assert collect(cfg)["summary"]["splits"] == {"test": 12, "train": 40, "val": 8}
    stats = preprocess(cfg)["summary"]
    assert stats["split_sizes"] == {"train": 40, "val": 8, "test": 12}
    test = pq.read_table(cfg.run_dir / "preprocess" / "test.parquet")["text"].to_pylist()
    assert sorted(test) == sorted(t for t, _, p in rows if p == "test")


def test_parallel_and_chat_read_a_split_column(tmp_path):
    pairs = [(f"zin {i} woord", f"sentence {i} word", "test" if i < 5 else "") for i in range(40)]
    (tmp_path / "p.tsv").write_text(
        "src\ttgt\tpart\n" + "".join(f"{a}\t{b}\t{p}\n" for a, b, p in pairs)
    )
    source = {"type": "parallel", "paths": [str(tmp_path / "p.tsv")], "source_field": "src",
              "target_field": "tgt", "split_field": "part"}  # fmt: skip
    cfg = load_config(
        ROOT / "configs" / "translation.yaml",
        [
            f"runs_dir={tmp_path / 'runs'}",
            f"collect.sources={json.dumps([source])}",
            "preprocess.vocab_size=270",
            "preprocess.test_fraction=0.3",
        ],  # fmt: skip
    )
    collect(cfg)
    stats = preprocess(cfg)["summary"]
    test = pq.read_table(cfg.run_dir / "preprocess" / "test.parquet")["source"].to_pylist()
    assert sorted(test) == sorted(a for a, _, p in pairs if p == "test")  # test_fraction unused
    assert stats["split_sizes"]["test"] == 5
    convs = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}],
         "part": "val" if i < 3 else "train"}
        for i in range(20)
    ]  # fmt: skip
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs))
    chat = {"type": "chat", "paths": [str(tmp_path / "c.jsonl")], "split_field": "part"}
    cfg = load_config(
        None,
        [f"runs_dir={tmp_path / 'runs'}", "name=chat", "task=chat",
         f"collect.sources={json.dumps([chat])}"],
    )  # fmt: skip
    assert collect(cfg)["summary"]["splits"] == {"train": 17, "val": 3}


def test_chat_repeat_upweights_a_training_source_and_refuses_other_splits(tmp_path):
    convs = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(5)
    ]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs))
    chat = {"type": "chat", "paths": [str(tmp_path / "c.jsonl")], "split": "train", "repeat": 3}
    synth = {"type": "synthetic_chat", "limit": 10}
    args = [f"runs_dir={tmp_path / 'runs'}", "name=chat", "task=chat"]
    cfg = load_config(None, [*args, f"collect.sources={json.dumps([synth, chat])}"])
    assert collect(cfg)["summary"]["splits"] == {"train": 15, "unassigned": 10}
    del chat["split"]  # copies drawn into val beside their twins: refused, naming the option
    with pytest.raises(ConfigError, match="repeat=3 .*split: train"):
        load_config(None, [*args, f"collect.sources={json.dumps([chat])}"])


def test_files_and_image_table_read_a_split_column(tmp_path):
    from PIL import Image

    docs = [
        {"text": f"document {i} " * 30, "part": "test" if i % 4 == 0 else ""} for i in range(12)
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    src = {"type": "files", "paths": [str(tmp_path / "d.jsonl")], "split_field": "part"}
    cfg = load_config(
        None, [f"runs_dir={tmp_path / 'runs'}", f"collect.sources={json.dumps([src])}"]
    )
    assert collect(cfg)["summary"]["splits"] == {"test": 3, "unassigned": 9}
    (tmp_path / "img").mkdir()
    rows = ["path,label,part"]
    for i in range(6):
        Image.fromarray(np.full((8, 8), i * 40, np.uint8)).save(tmp_path / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{i % 2},{'val' if i < 2 else 'train'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    src = {"type": "image_table", "paths": [str(tmp_path / "labels.csv")], "split_field": "part"}
    cfg = idx_config(tmp_path, tmp_path, f"collect.sources={json.dumps([src])}", "name=img")
    assert collect(cfg)["summary"]["splits"] == {"train": 4, "val": 2}
    src["split_field"] = "fold"
    cfg = idx_config(tmp_path, tmp_path, f"collect.sources={json.dumps([src])}", "name=img")
    with pytest.raises(CollectError, match=r"no column 'fold' \(collect.sources.0.split_field\)"):
        collect(cfg)
