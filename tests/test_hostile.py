"""Hostile input, property-based (hypothesis): whatever the bytes, only documented errors.

Documented errors are `ModelworksError` subclasses (ConfigError, CollectError, ...), each one
line. Anything else (KeyError, TypeError, a pydantic or yaml exception leaking out, a traceback)
fails these tests.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelworks.collect import collect
from modelworks.config import ConfigError, load_config
from modelworks.errors import ModelworksError
from modelworks.preprocess.tokenizer import train_bpe

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
KEYS = [
    "pretrain.lr", "pretrain.steps", "model.n_layer", "name", "collect.sources.0.type",
    "preprocess.vocab_size", "nope", "pretrain", "collect.sources.9.paths", "seed", "",
]  # fmt: skip


def _one_line(e: BaseException) -> None:
    assert isinstance(e, ModelworksError), f"{type(e).__name__}: {e}"
    assert "\n" not in str(e).strip(), str(e)


@SETTINGS
@given(text=st.text(max_size=300))
def test_any_yaml_text_loads_or_fails_with_a_config_error(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config([path], [f"runs_dir={tmp_path}"])
    except ConfigError as e:
        _one_line(e)


@SETTINGS
@given(data=st.binary(max_size=200))
def test_any_bytes_as_a_config_file(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    try:
        load_config([path], [f"runs_dir={tmp_path}"])
    except ConfigError as e:
        _one_line(e)


@SETTINGS
@given(
    key=st.sampled_from(KEYS) | st.text(string.ascii_letters + "._0123456789", max_size=20),
    value=st.text(max_size=40),
)
def test_any_override_applies_or_fails_with_a_config_error(tmp_path, key, value):
    try:
        load_config(None, [f"runs_dir={tmp_path}", f"{key}={value}"])
    except ConfigError as e:
        _one_line(e)


@pytest.fixture(scope="module")
def tokenizer():
    import pydoc_data.topics

    return train_bpe(list(pydoc_data.topics.topics.values())[:200], 400)


@SETTINGS
@given(text=st.text(max_size=400))
def test_tokenizer_round_trips_any_text(tokenizer, text):
    ids = tokenizer.encode(text).ids
    assert all(0 <= i < tokenizer.get_vocab_size() for i in ids)
    assert tokenizer.decode(ids) == text


def _collect_file(tmp_path: Path, name: str, data: bytes, *extra: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    cfg = load_config(
        None,
        [f"runs_dir={tmp_path / 'runs'}", "collect.sources.0.type=files",
         f"collect.sources.0.paths=['{path}']", *extra],
    )  # fmt: skip
    try:
        collect(cfg)
    except ModelworksError as e:
        _one_line(e)


@SETTINGS
@given(
    data=st.binary(max_size=300)
    | st.text(max_size=300).map(str.encode)
    | st.lists(
        st.dictionaries(st.sampled_from(["text", "id", "x"]), st.text(max_size=20) | st.integers())
    ).map(lambda rows: "\n".join(json.dumps(r) for r in rows).encode()),
    suffix=st.sampled_from([".txt", ".md", ".jsonl"]),
)
def test_text_readers_take_any_bytes(tmp_path, data, suffix):
    _collect_file(tmp_path, f"f{suffix}", data, "collect.sources.0.text_field=text")


@SETTINGS
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".csv", ".parquet", ".html", ".warc"]))
def test_other_readers_take_any_bytes(tmp_path, data, suffix):
    _collect_file(tmp_path, f"f{suffix}", data)


@SETTINGS
@given(data=st.binary(max_size=400))
def test_image_reader_takes_any_bytes(tmp_path, data):
    folder = tmp_path / "imgs"
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / "x.png").write_bytes(data)
    cfg = load_config(
        None,
        [f"runs_dir={tmp_path / 'runs'}", "task=image_classification",
         "collect.sources.0.type=image_folder", f"collect.sources.0.paths=['{folder}']"],
    )  # fmt: skip
    try:
        collect(cfg)
    except ModelworksError as e:
        _one_line(e)
