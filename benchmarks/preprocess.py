"""Quality-filter throughput and memory: modelworks against datatrove on the same documents, one
core each, plus peak memory of the modelworks pipeline (filters + MinHash) at 1x and 10x input.

    python benchmarks/preprocess.py               # 3,000 documents (and 30,000 for memory)
    python benchmarks/preprocess.py --docs 1000   # quicker

The corpus is built from Python's own documentation (pydoc topics, as every install has them),
cut into ~2 kB documents, with planted low-quality ones (lists, repeated lines, symbol soup) and
near-copies. Both systems run Gopher quality, Gopher repetition, C4 and FineWeb filters with
their default thresholds, each in a fresh subprocess (ru_maxrss = peak RSS). datatrove's filters
are called through their own `filter()` (what its pipeline step does per document; its English
word tokenizer needs spaCy). The MinHash stage is modelworks only here: benchmarks/dedup.py
compares it with datasketch. Writes benchmarks/results/preprocess.json.
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
    t0 = time.perf_counter()
    if system == "modelworks":
        from modelworks.preprocess import runner

        specs = ["gopher_quality", "gopher_repetition", "c4_quality", "fineweb_quality"]
        steps = runner.build_steps(specs + (["minhash_dedup"] if minhash else []))
        work = Path(os.environ.get("TMPDIR", "/tmp")) / f"mw_bench_{os.getpid()}"
        kept = sum(1 for _ in runner.run_steps(steps, lambda: docs, work, work / "_w"))
        runner.finish(steps, work / "_w")
    else:
        from datatrove.data import Document
        from datatrove.pipeline.filters import (
            C4QualityFilter,
            FineWebQualityFilter,
            GopherQualityFilter,
            GopherRepetitionFilter,
        )

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
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.docs, args.minhash)))
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
