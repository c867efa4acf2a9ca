"""Near-duplicate removal by MinHash + LSH over word n-grams, vectorised with numpy.

Same scheme as datatrove's `MinhashDedup*` and datasketch's `MinHashLSH`:
1. words (lower-cased, punctuation dropped) -> shingles of `shingle_size` consecutive words, each
   hashed to 32 bits (a polynomial over stable per-word CRC32s, so runs and processes agree);
2. `num_perm` multiply-shift hashes `((a*h + b) mod 2^64) >> 32` (Dietzfelbinger's universal
   family: no division, so numpy runs it at memory speed), keep each one's minimum: the
   signature. P[two signatures agree at one position] = Jaccard;
3. the signature is cut into `bands` bands of `rows` rows; documents sharing any whole band are
   candidates (P = 1 - (1 - J^rows)^bands, an S-curve around (1/bands)^(1/rows));
4. `verify` checks each candidate pair: "exact" (default) computes the true Jaccard of the two
   shingle sets in a second streaming pass that reads only documents in candidate pairs;
   "signature" uses the share of equal signature values (an estimate, +/-0.04 at 112
   permutations, so pairs just under the threshold slip through); "none" trusts the LSH bucket;
5. union-find over the pairs; each cluster keeps its first document in corpus order
   (deterministic), the rest are removed with reason `near_duplicate`.

Memory is `num_perm * 4` bytes per document for the signatures (448 bytes at 112), plus
the shingle sets of documents in candidate pairs for "exact" verification (about 4 bytes per
word); texts are streamed, never held. With `preprocess.workers > 1` or `executor: ray` the same
stages run partitioned over workers (preprocess/dedup.py) and no process holds the signatures.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable

import numpy as np

from modelworks.preprocess.steps import Filter

_SHIFT = np.uint64(32)
_MAX32 = np.uint64(0xFFFFFFFF)
_NONWORD = re.compile(r"[^\w\s]+")


def words_of(text: str) -> list[str]:
    return _NONWORD.sub(" ", text.lower()).split()


class MinHasher:
    def __init__(self, num_perm: int = 112, shingle_size: int = 5, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        # odd 64-bit multipliers; the products wrap modulo 2^64, which the scheme relies on
        self.a = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) * 2 + 1
        self.b = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64)
        self.num_perm, self.shingle_size = num_perm, shingle_size
        self._word_cache: dict[str, int] = {}
        self._powers = np.array(
            [pow(1_000_003, i, 1 << 32) for i in range(shingle_size)], dtype=np.uint64
        )

    def _word_hashes(self, words: list[str]) -> np.ndarray:
        cache = self._word_cache
        if len(cache) > 2_000_000:  # bound memory on huge vocabularies
            cache.clear()
        get = cache.get
        hashes = [get(w) for w in words]
        if None in hashes:
            for i, h in enumerate(hashes):
                if h is None:
                    w = words[i]
                    hashes[i] = cache[w] = zlib.crc32(w.encode("utf-8"))
        return np.array(hashes, dtype=np.uint64)

    def shingles(self, text: str) -> np.ndarray:
        """Distinct 32-bit hashes of the text's word n-grams (the whole text if shorter)."""
        wh = self._word_hashes(words_of(text))
        n = self.shingle_size
        if len(wh) < n:
            wh = np.concatenate([wh, np.zeros(n - len(wh), dtype=np.uint64)])
        windows = np.lib.stride_tricks.sliding_window_view(wh, n)
        return np.unique((windows * self._powers).sum(axis=1) & _MAX32)

    def signature(self, text: str) -> np.ndarray:
        sh = self.shingles(text)
        hashed = (sh[:, None] * self.a + self.b) >> _SHIFT
        return hashed.min(axis=0).astype(np.uint32)


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, x: int) -> int:
        p = self.parent
        root = x
        while p[root] != root:
            root = p[root]
        while p[x] != root:
            p[x], x = root, p[x]
        return root

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:  # the smaller index is the root: the first document of a cluster is kept
            self.parent[max(rx, ry)] = min(rx, ry)


class MinHashDedup(Filter):
    """Removes near-duplicates (estimated Jaccard of word n-gram sets >= threshold), keeping the
    first document of each cluster. Needs one pass over the corpus before filtering."""

    name = "minhash_dedup"
    needs_pass = True

    def __init__(
        self,
        shingle_size: int = 5,
        num_perm: int = 112,
        bands: int = 14,
        rows: int = 8,
        threshold: float = 0.8,
        verify: str = "exact",
        seed: int = 1,
    ) -> None:
        super().__init__()
        if bands * rows > num_perm:
            raise ValueError(f"bands x rows = {bands * rows} exceeds num_perm = {num_perm}")
        if verify not in ("exact", "signature", "none"):
            raise ValueError(f"verify: {verify!r} is not exact, signature or none")
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold: {threshold} must be in (0, 1]")
        self.hasher = MinHasher(num_perm, shingle_size, seed)
        self.bands, self.rows, self.threshold, self.verify = bands, rows, threshold, verify
        self._remove: np.ndarray | None = None
        self._index = 0

    def signatures(self, texts: Iterable[str]) -> np.ndarray:
        chunks, chunk = [], []
        for text in texts:
            chunk.append(self.hasher.signature(text))
            if len(chunk) == 4096:
                chunks.append(np.stack(chunk))
                chunk = []
        if chunk:
            chunks.append(np.stack(chunk))
        if not chunks:
            return np.zeros((0, self.hasher.num_perm), dtype=np.uint32)
        return np.concatenate(chunks)

    def candidates(self, sigs: np.ndarray) -> set[tuple[int, int]]:
        """Pairs (i < j) sharing at least one whole band."""
        pairs: set[tuple[int, int]] = set()
        r = self.rows
        for band in range(self.bands):
            part = np.ascontiguousarray(sigs[:, band * r : (band + 1) * r])
            keys = part.view(np.dtype((np.void, part.dtype.itemsize * r))).ravel()
            order = np.argsort(keys, kind="stable")
            sk = keys[order]
            # each member of a run of equal keys pairs with the run's first member
            starts = np.r_[True, sk[1:] != sk[:-1]]
            first = order[np.maximum.accumulate(np.where(starts, np.arange(len(sk)), 0))]
            for x, y in zip(first[~starts].tolist(), order[~starts].tolist(), strict=True):
                pairs.add((min(x, y), max(x, y)))
        return pairs

    def clusters(
        self, sigs: np.ndarray, read: Callable[[], Iterable[dict]] | None = None
    ) -> np.ndarray:
        """Root (first member) of each document's cluster."""
        n = len(sigs)
        uf = _UnionFind(n)
        pairs = sorted(self.candidates(sigs))
        self.stats["candidate_pairs"] = len(pairs)
        if self.verify != "none" and pairs:
            est = np.array([np.mean(sigs[x] == sigs[y]) for x, y in pairs])
            # "exact" pre-screens with a wide margin: the estimate's error is about 0.04
            floor = self.threshold - (0.15 if self.verify == "exact" else 0.0)
            pairs = [p for p, e in zip(pairs, est, strict=True) if e >= floor]
        if self.verify == "exact" and pairs:
            if read is None:
                raise ValueError("verify=exact needs a second pass over the documents")
            pairs = self._exact(pairs, read)
        self.stats["pairs_verified"] = len(pairs)
        for x, y in pairs:
            uf.union(x, y)
        return np.array([uf.find(i) for i in range(n)])

    def _exact(self, pairs: list[tuple[int, int]], read) -> list[tuple[int, int]]:
        wanted = {i for p in pairs for i in p}
        shingles = {}
        for i, doc in enumerate(read()):
            if i in wanted:
                shingles[i] = self.hasher.shingles(doc["text"]).astype(np.uint32)
        kept = []
        for x, y in pairs:
            a, b = shingles[x], shingles[y]
            inter = len(np.intersect1d(a, b, assume_unique=True))
            if inter / (len(a) + len(b) - inter) >= self.threshold:
                kept.append((x, y))
        return kept

    def prepare(self, read: Callable[[], Iterable[dict]]) -> None:
        """`read()` gives a fresh pass over the corpus (called once, twice with verify=exact)."""
        sigs = self.signatures(d["text"] for d in read())
        roots = self.clusters(sigs, read)
        self._remove = roots != np.arange(len(roots))
        self.stats["clusters_with_duplicates"] = int(len(np.unique(roots[self._remove])))
        self._index = 0

    def use_removals(self, remove: np.ndarray) -> None:
        """Verdicts computed across shards (preprocess/dedup.py): True = remove, in order."""
        self._remove, self._index = np.asarray(remove, dtype=bool), 0
        self.needs_pass = False  # prepared already: the runner streams straight through

    def filter(self, doc: dict) -> bool | tuple[bool, str]:
        if self._remove is None:
            raise RuntimeError("minhash_dedup: prepare() must see the corpus first")
        i = self._index
        self._index += 1
        return (False, "near_duplicate") if self._remove[i] else True
