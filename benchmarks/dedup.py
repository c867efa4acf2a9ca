"""Near-duplicate detection quality and speed: modelworks MinHash + LSH against exact-hash dedup
(the baseline every pipeline has) and datasketch's MinHashLSH (when installed), on one corpus
with planted near-duplicates at known Jaccard similarities.

    python benchmarks/dedup.py                 # 4,000 originals + 4,000 edited copies, ~1 min
    python benchmarks/dedup.py --docs 20000    # larger

The corpus is generated (Zipf-distributed words over a 20k vocabulary, 300-600 words per
document). Each original gets one copy with a share of its words replaced, so the copy's true
Jaccard similarity (over the same 5-word shingles the dedup uses) spreads from ~0.3 to 1.0; the
true value is computed exactly for every pair. Prints recall per similarity band, precision of the
removals (share of removed documents whose pair has true J >= 0.8, and >= 0.7),
documents/s and MB/s. The "cross-shard" row runs the parallel path (`preprocess.workers > 1`:
preprocess/dedup.py) over `--shard-docs` Parquet shards in `--workers` processes and checks that
it removes the same documents. Writes benchmarks/results/dedup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from modelworks.preprocess.minhash import MinHashDedup, MinHasher, jaccard
from modelworks.preprocess.steps import ExactDedup

BANDS = [(0.0, 0.5), (0.5, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.0001)]


def make_corpus(n: int, seed: int) -> tuple[list[dict], dict[str, float]]:
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(20_000)])
    ranks = np.arange(1, len(vocab) + 1)
    p = 1 / ranks**1.1
    p /= p.sum()
    hasher = MinHasher()
    docs, truth = [], {}
    for i in range(n):
        words = list(vocab[rng.choice(len(vocab), size=int(rng.integers(300, 600)), p=p)])
        docs.append({"id": f"orig{i}", "text": " ".join(words)})
        rate = float(rng.choice([0.0, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.15]))
        copy = [f"edit{rng.integers(10**9)}" if rng.random() < rate else w for w in words]
        # rate 0: the same text but for case and spacing, which exact dedup catches
        text = "  ".join(copy).upper() if rate == 0.0 else " ".join(copy)
        docs.append({"id": f"copy{i}", "text": text})
        a = set(map(int, hasher.shingles(docs[-2]["text"])))
        b = set(map(int, hasher.shingles(text)))
        truth[f"copy{i}"] = jaccard(a, b)
    order = rng.permutation(len(docs))  # copies sometimes come before their original
    return [docs[j] for j in order], truth


def score(removed: set[str], truth: dict[str, float], n_docs: int, seconds: float, mb: float):
    def twin(k):  # whichever of a pair came second is the one a dedup removes
        return k.replace("orig", "copy")

    removed_pairs = {twin(k) for k in removed}
    row = {"seconds": seconds, "docs_per_s": n_docs / seconds, "mb_per_s": mb / seconds}
    for lo, hi in BANDS:
        keys = [k for k, j in truth.items() if lo <= j < hi]
        row[f"recall_{lo:.1f}-{min(hi, 1):.1f}"] = (
            sum(k in removed_pairs for k in keys) / len(keys) if keys else float("nan")
        )
    high = [k for k, j in truth.items() if j >= 0.8]
    row["recall_J>=0.8"] = sum(k in removed_pairs for k in high) / len(high)
    n_removed = len(removed)
    row["removed"] = n_removed
    row["precision_J>=0.8"] = (
        sum(truth[twin(k)] >= 0.8 for k in removed) / n_removed if n_removed else 1.0
    )
    row["precision_J>=0.7"] = (
        sum(truth[twin(k)] >= 0.7 for k in removed) / n_removed if n_removed else 1.0
    )
    return row


def run_step(step, docs) -> tuple[set[str], float]:
    t0 = time.perf_counter()
    if step.needs_pass:
        step.prepare(lambda: iter(docs))
    kept = {d["id"] for d in step.run(dict(d) for d in docs)}
    return {d["id"] for d in docs} - kept, time.perf_counter() - t0


def run_cross_shard(docs, workers: int, shard_docs: int) -> tuple[set[str], float]:
    """The parallel path (`preprocess.workers > 1`): signatures per shard, LSH bands per worker,
    union-find over the pairs (preprocess/dedup.py), in a local pool of `workers` processes."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from modelworks.preprocess import dedup
    from modelworks.preprocess.executor import _Pool

    with tempfile.TemporaryDirectory() as tmp:
        sources = []
        for k in range(0, len(docs), shard_docs):
            path = f"{tmp}/in_{k:07d}.parquet"
            pq.write_table(pa.Table.from_pylist(docs[k : k + shard_docs]), path)
            sources.append((path, None))
        t0 = time.perf_counter()  # pool start-up included
        with _Pool(workers, "local", None) as pool:
            spec = {"step": "minhash_dedup", "threshold": 0.8}
            masks, _ = dedup.minhash_removals(spec, sources, Path(tmp) / "work", pool.map)
        seconds = time.perf_counter() - t0
        flags = np.concatenate([np.load(m) for m in masks])
    return {d["id"] for d, r in zip(docs, flags, strict=True) if r}, seconds


def run_datasketch(docs, threshold: float, num_perm: int) -> tuple[set[str], float] | None:
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError:
        return None
    from modelworks.preprocess.minhash import words_of

    t0 = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    removed = set()
    for d in docs:
        w = words_of(d["text"])
        m = MinHash(num_perm=num_perm)
        m.update_batch([" ".join(w[i : i + 5]).encode() for i in range(max(1, len(w) - 4))])
        if lsh.query(m):
            removed.add(d["id"])
        else:
            lsh.insert(d["id"], m)
    return removed, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=4000, help="originals (as many copies again)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="processes for the cross-shard row")
    ap.add_argument("--shard-docs", type=int, default=1000)
    ap.add_argument("--device", default="cpu", choices=["cpu"], help="dedup runs on CPU")
    ap.add_argument("--out", default="benchmarks/results/dedup.json")
    args = ap.parse_args()
    docs, truth = make_corpus(args.docs, args.seed)
    mb = sum(len(d["text"].encode()) for d in docs) / 1e6
    print(f"corpus: {len(docs)} documents, {mb:.1f} MB; planted pairs by true Jaccard:")
    for lo, hi in BANDS:
        print(f"  [{lo:.1f}, {min(hi, 1):.1f}): {sum(lo <= j < hi for j in truth.values())}")
    systems = {
        "exact (baseline)": lambda: run_step(ExactDedup(), docs),
        "modelworks minhash": lambda: run_step(MinHashDedup(threshold=0.8), docs),
        "modelworks minhash, signature verify": lambda: run_step(
            MinHashDedup(verify="signature"), docs
        ),
        "modelworks minhash, no verify": lambda: run_step(MinHashDedup(verify="none"), docs),
        f"modelworks minhash, cross-shard, {args.workers} workers": lambda: run_cross_shard(
            docs, args.workers, args.shard_docs
        ),
        "datasketch MinHashLSH": lambda: run_datasketch(docs, 0.8, 112),
    }
    rows, removed = {}, {}
    for name, fn in systems.items():
        res = fn()
        if res is None:
            print(f"{name}: not installed, skipped")
            continue
        rows[name] = score(res[0], truth, len(docs), res[1], mb)
        removed[name] = res[0]
    cols = ["docs_per_s", "mb_per_s", "recall_J>=0.8", "precision_J>=0.8", "precision_J>=0.7"]
    cols += [f"recall_{lo:.1f}-{min(hi, 1):.1f}" for lo, hi in BANDS]
    print("\n| system | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, row in rows.items():
        print(
            f"| {name} | "
            + " | ".join(f"{row[c]:.3f}" if row[c] < 10 else f"{row[c]:.0f}" for c in cols)
            + " |"
        )
    mw = rows["modelworks minhash"]
    cross = f"modelworks minhash, cross-shard, {args.workers} workers"
    same = removed[cross] == removed["modelworks minhash"]
    print(f"\ncross-shard path removes the same documents as the in-process one: {same}")
    rows[cross]["same_as_in_process"] = same
    if "datasketch MinHashLSH" in rows:
        ratio = mw["docs_per_s"] / rows["datasketch MinHashLSH"]["docs_per_s"]
        print(f"\nmodelworks / datasketch throughput: {ratio:.2f}x")
    ok = mw["recall_J>=0.8"] >= 0.9 and mw["precision_J>=0.8"] >= 0.99
    print(f"target (recall >= 0.9, precision >= 0.99 at J >= 0.8): {'met' if ok else 'NOT met'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"docs": len(docs), "mb": mb, "machine": platform.platform(), "cpus": os.cpu_count()}
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
