"""Parallel executors: the per-document steps run over shards in a process pool or on Ray.

    preprocess:
      workers: 4          # processes; 1 = everything in this process (the default)
      shard_docs: 10000   # documents per shard (rounded to whole Parquet row groups)
      executor: local     # or ray: each shard is a Ray task (preprocess.ray_address, or a
                          # local Ray instance of `workers` CPUs when unset)

The step list splits into segments, a new one at each step that needs the whole corpus
(exact_dedup, minhash_dedup). Each segment runs per shard in worker processes, each shard
writing its kept documents, its rejected documents and its stats to
`<run>/preprocess.work/<key>/[segment_N/]shard_K/`, then a `.done` marker last; the next segment
reads those documents. A segment that opens with a dedup first computes its verdicts across
shards in parallel too (preprocess/dedup.py: signatures per shard, candidate pairs per band and
key range, a union-find over the pairs only; hashes per prefix range for exact dedup), then each
shard filters with its own removal mask: no process holds the corpus, and the output is the
serial run's, document for document. A re-run after a crash finds the markers and runs only the
missing shards (the key covers the input file and the step list, so a changed config starts
afresh; a re-run shard makes the later segments start afresh).

On Ray the same shard function runs as a task per shard; shards read the collect Parquet and
write to the run folder by path, so on a multi-node cluster the run folder must be on storage
every node sees (NFS, a shared volume), as with datatrove's or NeMo Curator's executors.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pyarrow.parquet as pq

from modelworks.errors import PreprocessError
from modelworks.preprocess import runner
from modelworks.preprocess.steps import N_EXAMPLES

GLOBAL_STEPS = {"exact_dedup", "minhash_dedup"}  # preprocess/dedup.py runs them across shards


def split_specs(specs: list) -> tuple[list, list]:
    """(per-document prefix, the rest from the first cross-document step on)."""
    for i, spec in enumerate(specs):
        name = spec if isinstance(spec, str) else spec.get("step")
        if name in GLOBAL_STEPS:
            return specs[:i], specs[i:]
    return list(specs), []


def work_key(src: Path, specs: list, shard_docs: int) -> str:
    st = src.stat()
    blob = json.dumps([str(src.resolve()), st.st_size, st.st_mtime_ns, specs, shard_docs])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plan_shards(src: Path, shard_docs: int) -> list[list[int]]:
    """Row groups per shard: whole groups, about shard_docs documents each."""
    meta = pq.ParquetFile(src).metadata
    shards, current, n = [], [], 0
    for g in range(meta.num_row_groups):
        current.append(g)
        n += meta.row_group(g).num_rows
        if n >= shard_docs:
            shards.append(current)
            current, n = [], 0
    if current:
        shards.append(current)
    return shards


def split_segments(specs: list) -> list[list]:
    """Each cross-document step starts a new segment: [prefix], [dedup, steps...], ..."""
    segments: list[list] = [[]]
    for spec in specs:
        name = spec if isinstance(spec, str) else spec.get("step")
        if name in GLOBAL_STEPS and segments[-1]:
            segments.append([])
        segments[-1].append(spec)
    return [s for s in segments if s]


def _run_shard(
    specs: list, source: tuple, shard_dir: str, done: str, start: int, remove: str | None
) -> None:
    """One shard through one segment: documents.parquet, rejected/, stats.json, then `done`."""
    import numpy as np

    steps = runner.build_steps(specs)
    if remove is not None:  # the segment's first step is a dedup whose verdicts are computed
        steps[0].use_removals(np.load(remove))
    out = Path(shard_dir)
    if out.exists():  # a crash midway: start this shard again
        shutil.rmtree(out)
    out.mkdir(parents=True)
    kept = runner.run_steps(steps, lambda: runner.read_shard(*source), out, start=start)
    runner._spill(kept, out / "documents.parquet")
    report = runner.finish(steps)
    (out / "stats.json").write_text(json.dumps(report))
    Path(done).touch()  # last: the shard is complete


class _Pool:
    """Runs a function over argument tuples in worker processes or as Ray tasks, in order."""

    def __init__(self, workers: int, executor: str, address: str | None) -> None:
        self.workers, self.executor, self.address = workers, executor, address
        self._pool, self._ray, self._started = None, None, False

    def __enter__(self) -> _Pool:
        if self.executor == "ray":
            try:
                import ray
            except ImportError:
                raise PreprocessError(
                    "preprocess.executor=ray needs Ray: pip install 'ray>=2.9'"
                ) from None
            self._ray, self._started = ray, not ray.is_initialized()
            if self._started:  # a cluster's head when given, else a local instance
                kw = {"address": self.address} if self.address else {"num_cpus": self.workers}
                ray.init(**kw, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)  # fmt: skip
        return self

    def map(self, fn, arglists: list[tuple]) -> list:
        if not arglists:
            return []
        if self._ray is not None:
            task = self._ray.remote(num_cpus=1, max_retries=2)(fn)
            return self._ray.get([task.remote(*a) for a in arglists])
        if self._pool is None:  # spawn: no fork of a process holding threads (arrow, torch)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"))
        return [f.result() for f in [self._pool.submit(fn, *a) for a in arglists]]

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        if self._started:
            self._ray.shutdown()


def run_parallel(
    specs: list,
    src: Path,
    run_dir: Path,
    out_dir: Path,
    workers: int,
    shard_docs: int,
    reporter,
    executor: str = "local",
    address: str | None = None,
):
    """Runs every step over shards in `workers` processes (or Ray tasks), the dedup steps'
    cross-shard part partitioned too (preprocess/dedup.py); returns (docs iterator factory over
    the result, the report rows, the remaining specs (none), the work folder)."""
    from modelworks.preprocess import dedup

    work = run_dir / "preprocess.work" / work_key(src, specs, shard_docs)
    work.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(src, shard_docs)
    sources: list[tuple] = [(str(src), groups) for groups in shards]
    rows: list[dict] = []
    rerun = False  # a segment that ran makes the later ones stale
    with _Pool(workers, executor, address) as pool:
        for i, segment in enumerate(split_segments(specs)):
            seg = work if i == 0 else work / f"segment_{i}"  # segment 0: shard_K/ under work/
            if rerun and i > 0:
                shutil.rmtree(seg, ignore_errors=True)
            seg.mkdir(parents=True, exist_ok=True)
            todo = [k for k in range(len(shards)) if not (seg / f"shard_{k:05d}.done").exists()]
            if i == 0 and 0 < len(todo) < len(shards):
                n_done = len(shards) - len(todo)
                reporter.info(f"[preprocess] resuming: {n_done} of {len(shards)} shards done")
            first = segment[0] if isinstance(segment[0], str) else segment[0].get("step")
            removes, extra = [None] * len(shards), {}
            if first in GLOBAL_STEPS and todo:
                removes, extra = dedup.REMOVALS[first](segment[0], sources, seg / "dedup", pool.map)
            rerun = rerun or bool(todo)
            shard = [str(seg / f"shard_{k:05d}") for k in range(len(shards))]
            pool.map(
                _run_shard,
                [(segment, sources[k], shard[k], shard[k] + ".done", len(rows), removes[k])
                 for k in todo],
            )  # fmt: skip
            seg_rows = _merge_reports(
                [seg / f"shard_{k:05d}" / "stats.json" for k in range(len(shards))]
            )
            if extra or (first in GLOBAL_STEPS and not todo):
                extra = extra or _load_extra(seg)
                seg_rows[0].update(extra)
                (seg / "dedup_stats.json").write_text(json.dumps(extra))
            _merge_rejected(seg, len(shards), out_dir / "rejected")
            rows += seg_rows
            sources = [(str(seg / f"shard_{k:05d}" / "documents.parquet"), None)
                       for k in range(len(shards))]  # fmt: skip

    def docs():
        for source in sources:
            yield from runner.read_shard(*source)

    return docs, rows, [], work


def _load_extra(seg: Path) -> dict:
    path = seg / "dedup_stats.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _merge_reports(paths: list[Path]) -> list[dict]:
    merged: list[dict] = []
    for path in paths:
        for i, row in enumerate(json.loads(path.read_text())):
            if i == len(merged):
                merged.append({"step": row["step"], "counts": Counter(), "examples": {}})
            m = merged[i]
            m["counts"].update({k: v for k, v in row.items() if isinstance(v, int)})
            for kind, items in row.get("examples", {}).items():
                have = m["examples"].setdefault(kind, [])
                have.extend(items[: max(0, N_EXAMPLES - len(have))])
    return [{"step": m["step"], **dict(m["counts"]), "examples": m["examples"]} for m in merged]


def _merge_rejected(work: Path, n_shards: int, out: Path) -> None:
    names = sorted({p.name for p in work.glob("shard_*/rejected/*.parquet")})
    for name in names:
        out.mkdir(parents=True, exist_ok=True)
        with pq.ParquetWriter(out / name, runner.REJECT_SCHEMA) as w:
            for k in range(n_shards):
                p = work / f"shard_{k:05d}" / "rejected" / name
                if p.exists():
                    w.write_table(pq.read_table(p).cast(runner.REJECT_SCHEMA))


def cleanup(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    parent = work.parent
    if parent.exists() and not any(parent.iterdir()):
        os.rmdir(parent)
