"""Cross-shard dedup in parallel: exact and MinHash dedup as map tasks over shards and partitions,
the way datatrove's four MinHash stages work, so that no process holds the corpus.

MinHash (`minhash_removals`):
1. per shard (a worker each): signatures of its documents -> `sigs/shard_K/sigs.npy` (n x
   num_perm uint32, 448 bytes a document at 112 permutations), and per band the band's keys
   sorted by their first value (as datatrove sorts its per-bucket signature files);
2. per (band, key range) partition: each task finds its range in every shard's sorted band file
   by binary search (memory-mapped: it reads only its range), sorts the keys and writes the
   candidate pairs (global document indices) -> `pairs/band_B_R.npy`. A partition holds about
   `PART_DOCS` documents' band keys (32 bytes each at 8 rows), whatever the corpus size;
3. here: the unique pairs are screened by signature agreement (rows read from the memory-mapped
   signatures); with verify=exact the shingle sets of the documents still in pairs are computed
   per shard by workers (-> `shingles/`) and the pairs' true Jaccard checked; then a union-find
   over the pairs' documents only. Each cluster keeps its first document in corpus order, as the
   in-process path does, so the output is the same document for document;
4. per shard: the step filters with its removal mask (`remove/shard_K.npy`).

Exact dedup (`exact_removals`): per shard the 16-byte normalised hashes, sorted; per hash range
partition the first occurrence (lowest global index) of each hash is kept, the others go to the
removal masks.

Every task is a plain function of paths, run by the executor's local pool or as Ray tasks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from modelworks.preprocess import runner
from modelworks.preprocess.steps import exact_key

PART_DOCS = 4_000_000  # documents' band keys (or hashes) per partition task: ~130 MB at 8 rows

Map = Callable[[Callable, list[tuple]], list]  # (function, argument tuples) -> results in order


def _save(path: Path, arr: np.ndarray) -> None:
    """Atomic: a crash never leaves a partial array where a finished one is expected."""
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def _step(spec):
    return runner.build_steps([spec])[0]


# ---- MinHash ------------------------------------------------------------------------------------


def shard_signatures(spec, source: tuple, out_dir: str) -> int:
    """Signatures of the shard's documents (`sigs.npy`, for verification), and per band its
    keys sorted by their first value (`band_B.keys.npy`, rows x n, so that a partition task
    finds its key range by binary search and reads only that) with the local indices."""
    d = Path(out_dir)
    if not (d / "n.json").exists():
        d.mkdir(parents=True, exist_ok=True)
        step = _step(spec)
        sigs = step.signatures(x["text"] for x in runner.read_shard(*source))
        _save(d / "sigs.npy", sigs)
        r = step.rows
        for band in range(step.bands):
            cols = sigs[:, band * r : (band + 1) * r]
            order = np.argsort(cols[:, 0], kind="stable")  # equal values stay in corpus order
            _save(d / f"band_{band:03d}.keys.npy", np.ascontiguousarray(cols[order].T))
            _save(d / f"band_{band:03d}.idx.npy", order.astype(np.uint32))
        (d / "n.json").write_text(str(len(sigs)))  # last: the shard is complete
    return int((d / "n.json").read_text())


def _key_range(first: np.ndarray, part: int, parts: int, span: int) -> tuple[int, int]:
    """Positions in a sorted array of the values in this partition's share of [0, span)."""
    lo = 0 if part == 0 else int(np.searchsorted(first, (part * span) // parts))
    hi = (
        len(first)
        if part == parts - 1
        else int(np.searchsorted(first, ((part + 1) * span) // parts))
    )
    return lo, hi


def band_pairs(spec, sig_dirs: list[str], offsets: list[int], band: int, part: int, parts: int,
               out: str) -> int:  # fmt: skip
    """Candidate pairs (i < j, global indices) sharing the band, among the documents whose band
    starts with a value in this partition's range."""
    if Path(out).exists():
        return int(np.load(out, mmap_mode="r").shape[0])
    r = _step(spec).rows
    keys, index = [np.zeros((0, r), np.uint32)], [np.zeros(0, np.int64)]
    for d, off in zip(sig_dirs, offsets, strict=True):
        cols = np.load(Path(d) / f"band_{band:03d}.keys.npy", mmap_mode="r")
        lo, hi = _key_range(cols[0], part, parts, 1 << 32)
        keys.append(np.ascontiguousarray(cols[:, lo:hi].T))
        idx = np.load(Path(d) / f"band_{band:03d}.idx.npy", mmap_mode="r")
        index.append(idx[lo:hi].astype(np.int64) + off)
    flat = np.concatenate(keys).view(np.dtype((np.void, 4 * r))).ravel()
    ids = np.concatenate(index)
    # equal keys: shards in order, each in corpus order, so a run starts with its lowest index
    order = np.argsort(flat, kind="stable")
    sk = flat[order]
    starts = np.r_[True, sk[1:] != sk[:-1]] if len(sk) else np.zeros(0, bool)
    first = order[np.maximum.accumulate(np.where(starts, np.arange(len(sk)), 0))]
    pairs = np.stack([ids[first[~starts]], ids[order[~starts]]], axis=1).astype(np.int64)
    _save(Path(out), pairs)
    return len(pairs)


def shard_shingles(spec, source: tuple, wanted: list[int], out_prefix: str) -> None:
    """Shingle sets of the shard's documents still in candidate pairs (local indices `wanted`)."""
    values, lengths = Path(out_prefix + ".values.npy"), Path(out_prefix + ".lengths.npy")
    if lengths.exists():
        return
    step, want = _step(spec), set(wanted)
    chunks = []
    for i, doc in enumerate(runner.read_shard(*source)):
        if i in want:
            chunks.append(step.hasher.shingles(doc["text"]).astype(np.uint32))
    _save(values, np.concatenate(chunks) if chunks else np.zeros(0, np.uint32))
    _save(lengths, np.array([len(c) for c in chunks], dtype=np.int64))


class _Rows:
    """Global document index -> its shard's memory-mapped array row."""

    def __init__(self, paths: list[str], offsets: list[int]) -> None:
        self.arrays = [np.load(p, mmap_mode="r") for p in paths]
        self.offsets = np.asarray(offsets)

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shard = np.searchsorted(self.offsets, ids, side="right") - 1
        return shard, ids - self.offsets[shard]

    def __getitem__(self, ids: np.ndarray) -> np.ndarray:
        shard, local = self.locate(ids)
        out = np.empty((len(ids), self.arrays[0].shape[1]), dtype=self.arrays[0].dtype)
        for k in np.unique(shard):
            sel = shard == k
            out[sel] = self.arrays[k][local[sel]]
        return out


def _union_find_remove(pairs: np.ndarray) -> tuple[np.ndarray, int]:
    """Documents to remove (every cluster member but the lowest index) and the cluster count;
    memory is the pairs' documents, not the corpus."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    for x, y in pairs.tolist():
        rx, ry = find(x), find(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    removed = np.array(sorted(x for x in parent if find(x) != x), dtype=np.int64)
    roots = {find(x) for x in removed.tolist()}
    return removed, len(roots)


def _per_shard_masks(removed: np.ndarray, sizes: list[int], out_dir: Path) -> list[str]:
    offsets = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    paths = []
    for k, n in enumerate(sizes):
        mask = np.zeros(n, dtype=bool)
        local = removed[(removed >= offsets[k]) & (removed < offsets[k + 1])] - offsets[k]
        mask[local] = True
        path = out_dir / f"shard_{k:05d}.npy"
        _save(path, mask)
        paths.append(str(path))
    return paths


def minhash_removals(spec, sources: list[tuple], work: Path, pmap: Map) -> tuple[list[str], dict]:
    """Runs stages 1-3; returns each shard's removal-mask path and the step's global counts."""
    step = _step(spec)
    for sub in ("sigs", "pairs", "shingles", "remove"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    sig_dirs = [str(work / "sigs" / f"shard_{k:05d}") for k in range(len(sources))]
    sizes = pmap(shard_signatures, [(spec, s, d) for s, d in zip(sources, sig_dirs, strict=True)])
    offsets = np.r_[0, np.cumsum(sizes)][:-1].astype(np.int64).tolist()
    parts = max(1, math.ceil(sum(sizes) / PART_DOCS))
    sig_paths = [str(Path(d) / "sigs.npy") for d in sig_dirs]
    tasks = [
        (spec, sig_dirs, offsets, b, p, parts, str(work / "pairs" / f"band_{b:03d}_{p:04d}.npy"))
        for b in range(step.bands)
        for p in range(parts)
    ]
    pmap(band_pairs, tasks)
    found = [np.load(t[-1]) for t in tasks]
    pairs = np.unique(np.concatenate(found), axis=0) if found else np.zeros((0, 2), np.int64)
    stats = {"candidate_pairs": len(pairs)}
    if step.verify != "none" and len(pairs):
        sigs = _Rows(sig_paths, offsets)
        est = np.concatenate(
            [
                np.mean(sigs[pairs[i : i + 65536, 0]] == sigs[pairs[i : i + 65536, 1]], axis=1)
                for i in range(0, len(pairs), 65536)
            ]
        )
        floor = step.threshold - (0.15 if step.verify == "exact" else 0.0)
        pairs = pairs[est >= floor]
    if step.verify == "exact" and len(pairs):
        pairs = _verify_exact(spec, step.threshold, pairs, sources, offsets, work, pmap)
    stats["pairs_verified"] = len(pairs)
    removed, clusters = _union_find_remove(pairs)
    stats["clusters_with_duplicates"] = clusters
    return _per_shard_masks(removed, sizes, work / "remove"), stats


def _verify_exact(spec, threshold, pairs, sources, offsets, work: Path, pmap: Map) -> np.ndarray:
    rows = _Rows([], offsets)
    wanted = np.unique(pairs)
    shard, local = rows.locate(wanted)
    prefixes = [str(work / "shingles" / f"shard_{k:05d}") for k in range(len(sources))]
    pmap(
        shard_shingles,
        [(spec, sources[k], local[shard == k].tolist(), prefixes[k]) for k in range(len(sources))],
    )
    where: dict[int, tuple[np.ndarray, int, int]] = {}  # global index -> (values, start, end)
    for k, prefix in enumerate(prefixes):
        values = np.load(prefix + ".values.npy", mmap_mode="r")
        ends = np.cumsum(np.load(prefix + ".lengths.npy"))
        for g, end, n in zip(wanted[shard == k].tolist(), ends.tolist(),
                             np.diff(np.r_[0, ends]).tolist(), strict=True):  # fmt: skip
            where[g] = (values, end - n, end)
    keep = np.zeros(len(pairs), dtype=bool)
    for i, (x, y) in enumerate(pairs.tolist()):
        (va, sa, ea), (vb, sb, eb) = where[x], where[y]
        a, b = np.asarray(va[sa:ea]), np.asarray(vb[sb:eb])
        inter = len(np.intersect1d(a, b, assume_unique=True))
        keep[i] = inter / (len(a) + len(b) - inter) >= threshold
    return pairs[keep]


# ---- exact dedup --------------------------------------------------------------------------------


def shard_exact_keys(source: tuple, out_dir: str) -> int:
    """The shard's 16-byte hashes sorted (`keys.npy`), their first 8 bytes as integers for the
    partitions' binary search (`prefix.npy`) and their local indices (`idx.npy`)."""
    d = Path(out_dir)
    if not (d / "n.json").exists():
        d.mkdir(parents=True, exist_ok=True)
        raw = b"".join(exact_key(x["text"]) for x in runner.read_shard(*source))
        keys = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 16)
        order = np.argsort(keys.view(np.dtype((np.void, 16))).ravel(), kind="stable")
        keys = keys[order]
        _save(d / "keys.npy", keys)
        _save(
            d / "prefix.npy",
            np.ascontiguousarray(keys[:, :8]).view(">u8").ravel().astype(np.uint64),
        )
        _save(d / "idx.npy", order.astype(np.uint32))
        (d / "n.json").write_text(str(len(keys)))
    return int((d / "n.json").read_text())


def exact_part(key_dirs: list[str], offsets: list[int], part: int, parts: int, out: str) -> int:
    """Global indices of the repeats (all but the first occurrence) among the hashes in this
    partition's range."""
    if Path(out).exists():
        return int(np.load(out, mmap_mode="r").shape[0])
    keys, index = [np.zeros((0, 16), np.uint8)], [np.zeros(0, np.int64)]
    for d, off in zip(key_dirs, offsets, strict=True):
        prefix = np.load(Path(d) / "prefix.npy", mmap_mode="r")
        lo, hi = _key_range(prefix, part, parts, 1 << 64)
        keys.append(np.asarray(np.load(Path(d) / "keys.npy", mmap_mode="r")[lo:hi]))
        index.append(np.load(Path(d) / "idx.npy", mmap_mode="r")[lo:hi].astype(np.int64) + off)
    flat = np.ascontiguousarray(np.concatenate(keys)).view(np.dtype((np.void, 16))).ravel()
    ids = np.concatenate(index)
    order = np.argsort(flat, kind="stable")  # equal hashes: lowest global index first
    sk = flat[order]
    repeat = np.r_[False, sk[1:] == sk[:-1]] if len(sk) else np.zeros(0, bool)
    _save(Path(out), np.sort(ids[order[repeat]]))
    return int(repeat.sum())


def exact_removals(spec, sources: list[tuple], work: Path, pmap: Map) -> tuple[list[str], dict]:
    for sub in ("keys", "parts", "remove"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    key_paths = [str(work / "keys" / f"shard_{k:05d}") for k in range(len(sources))]
    sizes = pmap(shard_exact_keys, list(zip(sources, key_paths, strict=True)))
    offsets = np.r_[0, np.cumsum(sizes)][:-1].astype(np.int64).tolist()
    parts = max(1, math.ceil(sum(sizes) / PART_DOCS))
    outs = [str(work / "parts" / f"part_{p:04d}.npy") for p in range(parts)]
    pmap(exact_part, [(key_paths, offsets, p, parts, outs[p]) for p in range(parts)])
    removed = np.sort(np.concatenate([np.load(o) for o in outs]))
    return _per_shard_masks(removed, sizes, work / "remove"), {}


REMOVALS = {"minhash_dedup": minhash_removals, "exact_dedup": exact_removals}
