"""Preprocessing throughput and memory: modelworks against datatrove on the same documents, one
core each: the quality filters alone, then the whole pipeline (filters + MinHash near-dedup),
plus peak memory of the modelworks pipeline at 1x and 10x input.

    python benchmarks/preprocess.py               # 3,000 documents (and 30,000 for memory)
    python benchmarks/preprocess.py --docs 1000   # quicker

The corpus is built from Python's own documentation (pydoc topics, as every install has them),
cut into ~2 kB documents, with planted low-quality ones (lists, repeated lines, symbol soup) and
near-copies. Both systems run Gopher quality, Gopher repetition, C4 and FineWeb filters with
their default thresholds, each in a fresh subprocess (peak RSS = ru_maxrss of the process and of
its children). datatrove's filters are called through their own `filter()` (what its pipeline
step does per document; its English word tokenizer needs spaCy). Imports and spaCy's one-time
model load are not timed, on either side.

The whole-pipeline rows read the same JSONL file and write the kept documents as JSONL:
- modelworks: `runner.run_steps` over the four filters + `minhash_dedup` (5-word shingles,
  14 bands x 8 rows = 112 permutations, 32-bit hashes, threshold 0.8 with exact Jaccard
  verification of the candidate pairs: its default);
- datatrove: `LocalPipelineExecutor` (1 worker) running JsonlReader -> the four filters ->
  JsonlWriter, then its four MinHash stages (MinhashDedupSignature, MinhashDedupBuckets over 14
  tasks, MinhashDedupCluster, MinhashDedupFilter -> JsonlWriter) with MinhashConfig(n_grams=5,
  num_buckets=14, hashes_per_bucket=8, seed=1) and its default hashing (64-bit xxhash); it
  keeps every LSH candidate pair (no verification) and tokenises words with spaCy.
Rows give wall-clock docs/s and docs per CPU-second (user + system time of the process and its
children), the fairer figure on a shared machine; the near-duplicates each removed are counted by
corpus kind (planted near copy, navigation list, repeated paragraph, prose).
Writes benchmarks/results/preprocess.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path


def make_corpus(n: int, seed: int = 0):
    """Yields the documents (generated on the fly, so the input never sits in memory)."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    paras = [p for p in text.split("\n\n") if len(p) > 40]
    rng = random.Random(seed)
    recent: list[str] = []
    for i in range(n):
        kind = i % 10
        if kind == 7:  # a navigation list
            body = "\n".join(f"* item {rng.randint(0, 99)}" for _ in range(40))
        elif kind == 8:  # repeated lines
            body = "\n".join([rng.choice(paras)] * 8)
        elif kind == 9 and recent:  # a near copy of a recent document
            words = rng.choice(recent).split(" ")
            words[rng.randrange(len(words))] = "changed"
            body = " ".join(words)
        else:
            start = rng.randrange(len(paras))
            body, j = "", start
            while len(body) < 2000:
                body += paras[j % len(paras)] + "\n\n"
                j += 1
        recent = [*recent[-49:], body.strip()]
        yield {"id": f"d{i}", "text": body.strip(), "source": "bench"}


def child(system: str, n: int, minhash: bool) -> dict:
    mb = sum(len(d["text"].encode()) for d in make_corpus(n)) / 1e6
    docs = make_corpus(n)
    if system == "modelworks":
        from modelworks.preprocess import runner
    else:
        from datatrove.data import Document
        from datatrove.pipeline.filters import (
            C4QualityFilter,
            FineWebQualityFilter,
            GopherQualityFilter,
            GopherRepetitionFilter,
        )
        from datatrove.utils.word_tokenizers import load_word_tokenizer

        load_word_tokenizer("en").word_tokenize("warm")  # spaCy's one-time load (cached): untimed
    t0 = time.perf_counter()  # imports not timed, on either side
    if system == "modelworks":
        specs = ["gopher_quality", "gopher_repetition", "c4_quality", "fineweb_quality"]
        steps = runner.build_steps(specs + (["minhash_dedup"] if minhash else []))
        work = Path(os.environ.get("TMPDIR", "/tmp")) / f"mw_bench_{os.getpid()}"
        kept = sum(1 for _ in runner.run_steps(steps, lambda: docs, work, work / "_w"))
        runner.finish(steps, work / "_w")
    else:
        filters = [
            GopherQualityFilter(),
            GopherRepetitionFilter(),
            C4QualityFilter(),
            FineWebQualityFilter(),
        ]
        kept = 0
        for d in docs:
            doc = Document(text=d["text"], id=d["id"])
            for f in filters:
                verdict = f.filter(doc)
                ok = verdict[0] if isinstance(verdict, tuple) else verdict
                if not ok:
                    break
            else:
                kept += 1
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"docs": n, "kept": kept, "seconds": seconds, "docs_per_s": n / seconds,
            "mb_per_s": mb / seconds, "peak_rss_mb": peak_mb}  # fmt: skip


FILTER_STEPS = ["gopher_quality", "gopher_repetition", "c4_quality", "fineweb_quality"]


def write_corpus(n: int, path: Path) -> float:
    """The corpus as JSONL (both pipelines read this file); returns its text MB."""
    mb = 0.0
    with open(path, "w") as f:
        for d in make_corpus(n):
            mb += len(d["text"].encode()) / 1e6
            f.write(json.dumps(d) + "\n")
    return mb


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (datatrove's tasks)."""
    ru = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(r.ru_utime + r.ru_stime for r in ru)


def pipeline_child(system: str, corpus: Path, work: Path, filters: bool, verify: str) -> dict:
    """(Filters +) MinHash dedup over `corpus`, kept documents to `work/out`; counts."""
    out = work / "out"
    out.mkdir(parents=True)
    if system == "modelworks":
        from modelworks.preprocess import runner

        t0, c0 = time.perf_counter(), _cpu_seconds()  # imports not timed, on either side

        def read():
            with open(corpus) as f:
                for line in f:
                    yield json.loads(line)

        dedup = {"step": "minhash_dedup", "verify": verify}
        steps = runner.build_steps([*(FILTER_STEPS if filters else []), dedup])
        with open(out / "00000.jsonl", "w") as f:
            for doc in runner.run_steps(steps, read, work, work / "_w"):
                f.write(json.dumps(doc) + "\n")
        rows = runner.finish(steps, work / "_w")
        after_filters, kept = rows[-1]["in"], rows[-1]["out"]
    else:
        import xxhash
        from datatrove.executor import LocalPipelineExecutor
        from datatrove.pipeline.dedup.minhash import (
            MinhashConfig,
            MinhashDedupBuckets,
            MinhashDedupCluster,
            MinhashDedupFilter,
            MinhashDedupSignature,
        )
        from datatrove.pipeline.filters import (
            C4QualityFilter,
            FineWebQualityFilter,
            GopherQualityFilter,
            GopherRepetitionFilter,
        )
        from datatrove.pipeline.readers import JsonlReader
        from datatrove.pipeline.writers import JsonlWriter
        from datatrove.utils.hashes import xxhash as dt_xxhash
        from datatrove.utils.word_tokenizers import load_word_tokenizer

        load_word_tokenizer("en").word_tokenize("warm")  # spaCy's one-time load (cached): untimed
        t0, c0 = time.perf_counter(), _cpu_seconds()

        # xxhash 4 takes bytes only; datatrove 0.10.1 passes str (older xxhash encoded it)
        dt_xxhash.xxhash64 = lambda d: xxhash.xxh64_intdigest(
            d.encode() if isinstance(d, str) else d
        )
        config = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8, seed=1)
        filtered, sigs, dups, remove = (work / x for x in ("filtered", "sigs", "dups", "remove"))

        def stage(pipeline, name, tasks=1):
            logs = str(work / "logs" / name)
            LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=logs).run()

        quality = [GopherQualityFilter(), GopherRepetitionFilter(), C4QualityFilter(),
                   FineWebQualityFilter()] if filters else []  # fmt: skip
        stage([JsonlReader(str(corpus.parent), glob_pattern=corpus.name), *quality,
               JsonlWriter(str(filtered), compression=None)], "filters")  # fmt: skip
        stage([JsonlReader(str(filtered)), MinhashDedupSignature(str(sigs), config=config)], "1")
        stage([MinhashDedupBuckets(str(sigs), str(dups), config=config)], "2", tasks=14)
        stage([MinhashDedupCluster(str(dups), str(remove), config=config)], "3")
        stage([JsonlReader(str(filtered)), MinhashDedupFilter(str(remove)),
               JsonlWriter(str(out), compression=None)], "4")  # fmt: skip

        def lines(folder: Path) -> int:
            return sum(len(p.read_text().splitlines()) for p in folder.glob("*.jsonl"))

        after_filters, kept = lines(filtered), lines(out)
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    if system == "modelworks":
        import pyarrow.parquet as pq

        (rej,) = (work / "rejected").glob("*minhash_dedup.parquet") or [None]
        removed = pq.read_table(rej).column("id").to_pylist() if rej else []
    else:
        ids = [{json.loads(x)["id"] for p in d.glob("*.jsonl") for x in p.read_text().splitlines()}
               for d in (filtered, out)]  # fmt: skip
        removed = sorted(ids[0] - ids[1])
    # what the removed documents were, by the corpus's kind (id mod 10): 9 = planted near copy,
    # 7 = navigation list ("* item N" lines), 8 = one paragraph repeated, else prose
    kinds = Counter(
        {9: "near_copy", 7: "nav_list", 8: "repeated"}.get(int(i[1:]) % 10, "prose")
        for i in removed
    )
    who = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    peak_mb = max(resource.getrusage(w).ru_maxrss for w in who) / 1024
    return {"seconds": seconds, "cpu_seconds": cpu, "after_filters": after_filters, "kept": kept,
            "near_duplicates_removed": after_filters - kept, "removed_kinds": dict(kinds),
            "peak_rss_mb": peak_mb}  # fmt: skip


def run_pipeline(
    system: str, corpus: Path, mb: float, n: int, filters: bool, verify: str = "exact"
) -> dict | None:
    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(prefix=f"pp_{system}_"))
    cmd = [sys.executable, __file__, "--pipeline-child", system, "--corpus", str(corpus),
           "--work", str(work), "--verify", verify]  # fmt: skip
    cmd += ["--filters"] if filters else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if proc.returncode != 0:
        print(f"{system} pipeline: failed: {proc.stderr.strip().splitlines()[-3:]}")
        return None
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r.update(docs=n, docs_per_s=n / r["seconds"], mb_per_s=mb / r["seconds"],
             docs_per_cpu_s=n / r["cpu_seconds"])  # fmt: skip
    return r


def agreement(n: int) -> dict | None:
    """Share of (document, filter) verdicts on which modelworks and datatrove agree."""
    try:
        from datatrove.data import Document
        from datatrove.pipeline.filters import (
            C4QualityFilter,
            FineWebQualityFilter,
            GopherQualityFilter,
            GopherRepetitionFilter,
        )
    except ImportError:
        return None
    from modelworks.preprocess.quality import (
        C4Quality,
        FineWebQuality,
        GopherQuality,
        GopherRepetition,
    )

    pairs = [
        (GopherQualityFilter(), GopherQuality()),
        (GopherRepetitionFilter(), GopherRepetition()),
        (C4QualityFilter(), C4Quality()),
        (FineWebQualityFilter(), FineWebQuality()),
    ]
    same = {mw.name: 0 for _, mw in pairs}
    for d in make_corpus(n):
        for dt, mw in pairs:
            a = dt.filter(Document(text=d["text"], id=d["id"]))
            b = mw.filter(dict(d))
            same[mw.name] += (a[0] if isinstance(a, tuple) else a) == (
                b[0] if isinstance(b, tuple) else b
            )
    return {k: v / n for k, v in same.items()}


def run_child(system: str, n: int, minhash: bool) -> dict | None:
    cmd = [sys.executable, __file__, "--child", system, "--docs", str(n)]
    if minhash:
        cmd.append("--minhash")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"{system}: failed: {proc.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--child", choices=["modelworks", "datatrove"])
    ap.add_argument("--minhash", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/preprocess.json")
    ap.add_argument("--device", default="cpu", choices=["cpu"], help="text steps run on CPU")
    ap.add_argument("--pipeline-child", choices=["modelworks", "datatrove"])
    ap.add_argument("--corpus", type=Path)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--filters", action="store_true")
    ap.add_argument("--verify", default="exact")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.docs, args.minhash)))
        return
    if args.pipeline_child:
        r = pipeline_child(args.pipeline_child, args.corpus, args.work, args.filters, args.verify)
        print(json.dumps(r))
        return
    print(f"load average before: {os.getloadavg()}")
    rows = {}
    for system in ("modelworks", "datatrove"):
        rows[f"{system} filters"] = run_child(system, args.docs, False)
    rows["modelworks filters + minhash"] = run_child("modelworks", args.docs, True)
    rows["modelworks filters + minhash, 10x"] = run_child("modelworks", args.docs * 10, True)
    print("\n| run | docs | kept | docs/s | MB/s | peak RSS MB |\n|---|---|---|---|---|---|")
    for name, r in rows.items():
        if r:
            print(f"| {name} | {r['docs']} | {r['kept']} | {r['docs_per_s']:.0f} | "
                  f"{r['mb_per_s']:.2f} | {r['peak_rss_mb']:.0f} |")  # fmt: skip
    mw, dt = rows["modelworks filters"], rows["datatrove filters"]
    if mw and dt:
        print(
            f"\nfilters, modelworks / datatrove docs/s: {mw['docs_per_s'] / dt['docs_per_s']:.2f}x"
        )
    one, ten = rows["modelworks filters + minhash"], rows["modelworks filters + minhash, 10x"]
    if one and ten:
        print(f"peak RSS at 10x input / 1x: {ten['peak_rss_mb'] / one['peak_rss_mb']:.2f}x")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        mb = write_corpus(args.docs, corpus)
        pipe = {
            (system, label): run_pipeline(system, corpus, mb, args.docs, filters)
            for label, filters in (("filters + minhash", True), ("minhash only", False))
            for system in ("modelworks", "datatrove")
        }
        # LSH candidates only, no verification: what datatrove removes
        label = "minhash only, verify=none"
        pipe[("modelworks", label)] = run_pipeline(
            "modelworks", corpus, mb, args.docs, False, "none"
        )
    print(
        "\nwhole pipelines, one core each (datatrove: LocalPipelineExecutor, its 4 MinHash stages):"
    )
    print("| system | pipeline | docs | after filters | near-dups removed | kept | docs/s | MB/s | "
          "docs per CPU-s | peak RSS MB |\n|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for (name, label), r in pipe.items():
        if r:
            print(f"| {name} | {label} | {r['docs']} | {r['after_filters']} | "
                  f"{r['near_duplicates_removed']} | {r['kept']} | {r['docs_per_s']:.0f} | "
                  f"{r['mb_per_s']:.2f} | {r['docs_per_cpu_s']:.0f} | "
                  f"{r['peak_rss_mb']:.0f} |")  # fmt: skip
        rows[f"{name} pipeline ({label})"] = r
    for (name, label), r in pipe.items():
        if r:
            print(f"{name}, {label}: near-dedup removed by corpus kind {r['removed_kinds']}")
    for label in ("filters + minhash", "minhash only"):
        mw, dt = pipe[("modelworks", label)], pipe[("datatrove", label)]
        if mw and dt:
            ratio = mw["docs_per_s"] / dt["docs_per_s"]
            cpu_ratio = mw["docs_per_cpu_s"] / dt["docs_per_cpu_s"]
            print(f"{label}, modelworks / datatrove: {ratio:.2f}x docs/s, {cpu_ratio:.2f}x docs "
                  "per CPU-second (goal >= 1.5x per core)")  # fmt: skip
            rows[f"ratio ({label})"] = {"docs_per_s": ratio, "docs_per_cpu_s": cpu_ratio}
    agree = agreement(min(args.docs, 1000))
    if agree:
        print(
            "verdicts agreeing with datatrove: "
            + ", ".join(f"{k} {v:.1%}" for k, v in agree.items())
        )
        rows["agreement_with_datatrove"] = agree
    print(f"load average after: {os.getloadavg()}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "load": os.getloadavg()}
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
