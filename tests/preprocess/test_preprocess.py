import numpy as np
import pytest

from modelworks.preprocess.pack import ShardWriter, TokenShards, token_dtype, write_meta
from modelworks.preprocess.steps import CleanWhitespace, ExactDedup, MinLength, is_validation
from modelworks.preprocess.tokenizer import TokenizerError, train_bpe


def _corpus():
    from pydoc_data.topics import topics

    return list(topics.values())


def test_tokenizer_round_trips_any_text():
    tok = train_bpe(_corpus(), 600)
    assert tok.get_vocab_size() == 600
    for text in ["def f(x):\n\treturn x ** 2  # ok", "naïve café — 東京 🙂", "", "  \n\n  spaces"]:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids) == text


def test_vocabulary_larger_than_the_corpus_is_an_error():
    with pytest.raises(TokenizerError, match="preprocess.vocab_size=5000 is larger than"):
        train_bpe(["a tiny corpus", "with few words"], 5000)


def test_shards_yield_exactly_the_packed_tokens(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 70000, size=rng.integers(1, 50)).tolist() for _ in range(40)]
    dtype = token_dtype(70001)
    assert dtype == np.uint32
    w = ShardWriter(tmp_path, "train", dtype, shard_tokens=100)  # forces several shards
    for d in docs:
        w.add(d)
    shards = w.close()
    assert len(shards) > 1
    write_meta(tmp_path, dtype, 70001, 0, {"train": shards})
    reader = TokenShards(tmp_path, "train")
    assert [d.tolist() for d in reader.documents()] == docs
    assert reader.tokens().tolist() == [t for d in docs for t in d]
    assert len(reader) == sum(map(len, docs))


def test_steps_clean_filter_and_dedup():
    docs = [
        {"id": "a", "text": "Hello   \r\nworld\x00\n\n\n\nend  "},
        {"id": "b", "text": "hello\n world\n\nEND"},
        {"id": "c", "text": "short"},
    ]
    steps = [CleanWhitespace(), MinLength(10), ExactDedup()]
    out = docs
    for s in steps:
        out = s.run(out)
    out = list(out)
    assert [d["id"] for d in out] == ["a"]
    assert out[0]["text"] == "Hello\nworld\n\nend"
    assert steps[1].stats["removed:min_length"] == 1
    assert steps[2].stats["removed:exact_dedup"] == 1


def test_split_is_deterministic_by_id():
    ids = [f"doc{i}" for i in range(2000)]
    first = [is_validation(i, 0.1, 1) for i in ids]
    assert first == [is_validation(i, 0.1, 1) for i in reversed(ids)][::-1]
    assert 150 < sum(first) < 250


def test_a_small_corpus_that_draws_no_val_document_gets_the_nearest_one(tmp_path):
    import json
    from pydoc_data.topics import topics

    import pyarrow.parquet as pq

    from modelworks.config import load_config
    from modelworks.pipeline import stage_functions
    from modelworks.preprocess.steps import split_score

    texts = [t for t in topics.values() if len(t) > 400][:6]
    for i, text in enumerate(texts):
        (tmp_path / f"d{i}.txt").write_text(text)
    cfg = load_config(
        None,
        [f"runs_dir={tmp_path / 'runs'}", "collect.sources.0.type=files",
         f"collect.sources.0.paths=[{tmp_path}/*.txt]", "preprocess.val_fraction=1e-9",
         "preprocess.vocab_size=300", "preprocess.min_chars=10"],
    )  # fmt: skip
    for stage in ("collect", "preprocess"):
        stage_functions()[stage](cfg)
    docs = pq.read_table(cfg.run_dir / "preprocess" / "documents.parquet").to_pylist()
    # none drawn at random (at 0.001, 6 ids under tmp_path: one path in ~170 drew one)
    assert all(split_score(d["id"], cfg.seed) >= 1e-9 for d in docs)
    val = [d["id"] for d in docs if d["split"] == "val"]
    assert val == [min((d["id"] for d in docs), key=lambda i: split_score(i, cfg.seed))]
    stats = json.loads((cfg.run_dir / "preprocess" / "stats.json").read_text())
    assert stats["documents"]["val"] == 1 and stats["documents"]["train"] == len(docs) - 1
