"""Parallel executors: the per-document steps run over shards in a process pool or on Ray.

    preprocess:
      workers: 4          # processes; 1 = everything in this process (the default)
      shard_docs: 10000   # documents per shard (rounded to whole Parquet row groups)
      executor: local     # or ray: each shard is a Ray task (preprocess.ray_address, or a
                          # local Ray instance of `workers` CPUs when unset)

The step list splits at the first step that needs the whole corpus (exact_dedup, minhash_dedup):
the steps before it run per shard in worker processes, each shard writing its kept documents,
its rejected documents and its stats to `<run>/preprocess.work/<key>/`, then a `.done` marker
last. A re-run after a crash finds the markers and runs only the missing shards (the key covers
the input file and the step list, so a changed config starts afresh). The cross-shard steps then
stream over the shards' outputs in this process: exact dedup keeps 16 bytes per document and
near-dedup a 448-byte signature, never the texts.

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

from modelworks.preprocess import runner
from modelworks.preprocess.steps import N_EXAMPLES

GLOBAL_STEPS = {"exact_dedup", "minhash_dedup"}


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


def _run_shard(specs: list, src: str, groups: list[int], work: str, k: int) -> None:
    work_dir = Path(work)
    steps = runner.build_steps(specs)
    pf = pq.ParquetFile(src)

    def docs():
        for g in groups:
            yield from pf.read_row_group(g).to_pylist()

    shard_dir = work_dir / f"shard_{k:05d}"
    if shard_dir.exists():  # a crash midway: start this shard again
        shutil.rmtree(shard_dir)
    shard_dir.mkdir(parents=True)
    kept = runner.run_steps(steps, docs, shard_dir)
    runner._spill(kept, shard_dir / "documents.parquet")
    report = runner.finish(steps)
    (shard_dir / "stats.json").write_text(json.dumps(report))
    (work_dir / f"shard_{k:05d}.done").touch()  # last: the shard is complete


def _run_local(prefix: list, src: Path, shards: list, work: Path, todo: list, workers: int):
    ctx = get_context("spawn")  # no fork of a process holding threads (arrow, torch)
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as pool:
        futures = [pool.submit(_run_shard, prefix, str(src), shards[k], str(work), k) for k in todo]
        for f in futures:
            f.result()


def _run_ray(prefix, src, shards, work, todo, workers: int, address: str | None) -> None:
    try:
        import ray
    except ImportError:
        from modelworks.preprocess.text import PreprocessError

        raise PreprocessError("preprocess.executor=ray needs Ray: pip install 'ray>=2.9'") from None
    started = not ray.is_initialized()
    if started:  # a cluster's head when given, else a local instance of `workers` CPUs
        kw = {"address": address} if address else {"num_cpus": workers}
        ray.init(**kw, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=2)(_run_shard)
        ray.get([task.remote(prefix, str(src), shards[k], str(work), k) for k in todo])
    finally:
        if started:
            ray.shutdown()


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
    """Runs the prefix over shards in `workers` processes; returns (docs iterator factory for
    the remaining steps, the prefix's report rows, the remaining specs, the work folder)."""
    prefix, rest = split_specs(specs)
    work = run_dir / "preprocess.work" / work_key(src, specs, shard_docs)
    work.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(src, shard_docs)
    todo = [k for k in range(len(shards)) if not (work / f"shard_{k:05d}.done").exists()]
    if len(todo) < len(shards):
        reporter.info(
            f"[preprocess] resuming: {len(shards) - len(todo)} of {len(shards)} shards done"
        )
    if todo and executor == "ray":
        _run_ray(prefix, src, shards, work, todo, workers, address)
    elif todo:
        _run_local(prefix, src, shards, work, todo, workers)
    rows = _merge_reports([work / f"shard_{k:05d}" / "stats.json" for k in range(len(shards))])
    _merge_rejected(work, len(shards), out_dir / "rejected")

    def docs():
        for k in range(len(shards)):
            path = work / f"shard_{k:05d}" / "documents.parquet"
            for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
                yield from batch.to_pylist()

    return docs, rows, rest, work


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
