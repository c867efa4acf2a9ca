"""Cross-shard dedup in parallel (preprocess/dedup.py): the same documents removed as the
in-process path, with near- and exact duplicates planted across shards."""

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelworks.config import load_config
from modelworks.preprocess import dedup
from modelworks.preprocess.minhash import MinHashDedup
from modelworks.preprocess.steps import ExactDedup

STEPS = "[whitespace, exact_dedup, {step: minhash_dedup, threshold: 0.7}, min_length]"


def _docs(n: int = 1300, seed: int = 0) -> list[dict]:
    """Distinct documents of random words; every 7th is an edited copy (one or a few words
    changed) and every 11th a case-changed exact copy of a document far back (other shards)."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)]
    docs: list[dict] = []
    for i in range(n):
        if i % 7 == 6 and i > 600:
            words = docs[rng.randrange(i - 600)]["text"].split()
            for _ in range(rng.choice([1, 2, 4, 12])):
                words[rng.randrange(len(words))] = "edited"
            text = " ".join(words)
        elif i % 11 == 10 and i > 600:
            text = docs[rng.randrange(i - 600)]["text"].upper()
        else:
            text = " ".join(rng.choice(vocab) for _ in range(rng.randint(40, 120)))
        docs.append({"id": f"d{i}", "text": text, "source": "t"})
    return docs


def _inline(fn, arglists):  # the executor's map, in this process
    return [fn(*a) for a in arglists]


def _shards(tmp_path, docs, size):
    paths = []
    for k in range(0, len(docs), size):
        path = tmp_path / f"in_{k}.parquet"
        pq.write_table(pa.Table.from_pylist(docs[k : k + size]), path)
        paths.append((str(path), None))
    return paths


@pytest.mark.parametrize("verify", ["exact", "signature"])
def test_minhash_partitions_remove_what_the_single_process_removes(tmp_path, monkeypatch, verify):
    monkeypatch.setattr(dedup, "PART_DOCS", 300)  # several key ranges per band
    docs = _docs()
    serial = MinHashDedup(threshold=0.7, verify=verify)
    serial.prepare(lambda: iter(docs))
    spec = {"step": "minhash_dedup", "threshold": 0.7, "verify": verify}
    masks, stats = dedup.minhash_removals(spec, _shards(tmp_path, docs, 250), tmp_path, _inline)
    parallel = np.concatenate([np.load(m) for m in masks])
    assert parallel.sum() > 80  # the planted copies are found across shards
    assert np.array_equal(parallel, serial._remove)
    for key in ("candidate_pairs", "pairs_verified", "clusters_with_duplicates"):
        assert stats[key] == serial.stats[key], key


def test_exact_partitions_keep_the_first_occurrence(tmp_path, monkeypatch):
    monkeypatch.setattr(dedup, "PART_DOCS", 300)
    docs = _docs()
    serial = ExactDedup()
    expected = np.array([not serial.filter(d) for d in docs])
    masks, _ = dedup.exact_removals("exact_dedup", _shards(tmp_path, docs, 250), tmp_path, _inline)
    parallel = np.concatenate([np.load(m) for m in masks])
    assert expected.sum() > 30 and np.array_equal(parallel, expected)


def _preprocess(tmp_path, name: str, extra: list[str]):
    from modelworks.collect import collect
    from modelworks.preprocess import preprocess

    corpus = tmp_path / "corpus.jsonl"
    if not corpus.exists():
        corpus.write_text("".join(json.dumps(d) + "\n" for d in _docs()))
    cfg = load_config(None, [
        f"runs_dir={tmp_path / name}", "collect.sources.0.type=files",
        f"collect.sources.0.paths=[{corpus}]", f"preprocess.steps={STEPS}",
        "preprocess.vocab_size=300", *extra,
    ])  # fmt: skip
    collect(cfg)
    preprocess(cfg)
    return cfg.run_dir / "preprocess"


def _same_runs(a, b) -> None:
    da, db = (pq.read_table(p / "documents.parquet").to_pylist() for p in (a, b))
    assert da == db
    sa, sb = (json.loads((p / "stats.json").read_text()) for p in (a, b))
    for ra, rb in zip(sa["funnel"], sb["funnel"], strict=True):
        assert {k: v for k, v in ra.items() if k != "examples"} == {
            k: v for k, v in rb.items() if k != "examples"
        }
    for name in ("01_exact_dedup.parquet", "02_minhash_dedup.parquet"):
        ra, rb = (pq.read_table(p / "rejected" / name).column("id").to_pylist() for p in (a, b))
        assert ra == rb and len(ra) > 20, name


def test_parallel_preprocess_matches_workers_1_with_duplicates_across_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(dedup, "PART_DOCS", 400)  # the partition count is decided here
    serial = _preprocess(tmp_path, "serial", [])
    par = _preprocess(tmp_path, "par", ["preprocess.workers=2", "preprocess.shard_docs=64"])
    _same_runs(serial, par)
    funnel = json.loads((par / "stats.json").read_text())["funnel"]
    assert [r["step"] for r in funnel] == ["whitespace", "exact_dedup", "minhash_dedup",
                                           "min_length"]  # fmt: skip
    assert funnel[2]["removed:near_duplicate"] > 30
    assert not (par.parent / "preprocess.work").exists()


@pytest.mark.slow
def test_ray_dedup_matches_workers_1(tmp_path):
    """The dedup stages as Ray tasks on a local Ray instance the test starts (2 CPUs)."""
    pytest.importorskip("ray")
    serial = _preprocess(tmp_path, "serial", [])
    extra = ["preprocess.executor=ray", "preprocess.workers=2", "preprocess.shard_docs=64"]
    _same_runs(serial, _preprocess(tmp_path, "ray", extra))
