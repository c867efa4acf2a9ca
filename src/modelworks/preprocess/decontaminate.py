"""Decontamination: drop (or flag) training documents that share a long word n-gram with an
evaluation set, the GPT-3 / lm-eval-harness approach (13-grams by default).

Eval sets are local files: .txt/.md (the whole file is one text), .jsonl (every string field of
every record), .parquet/.csv (`text_field`). Words are lower-cased with punctuation dropped, so
formatting differences do not hide an overlap. An eval text shorter than `n` words is matched as
one whole n-gram. The index holds one 8-byte hash per distinct eval n-gram.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from modelworks.preprocess.minhash import words_of
from modelworks.preprocess.steps import Filter


def _hash(words: list[str]) -> int:
    digest = hashlib.blake2b(" ".join(words).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def ngram_hashes(text: str, n: int) -> Iterator[int]:
    words = words_of(text)
    if len(words) < n:
        if words:
            yield _hash(words)
        return
    for i in range(len(words) - n + 1):
        yield _hash(words[i : i + n])


def read_eval_texts(pattern: str, text_field: str) -> Iterator[str]:
    paths = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not paths:
        raise FileNotFoundError(f"eval_paths: no file matches {pattern!r}")
    for path in paths:
        if path.suffix == ".jsonl":
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        raise ValueError(f"{path}: a line is not valid JSON") from None
                    values = record.values() if isinstance(record, dict) else [record]
                    yield from (v for v in values if isinstance(v, str))
        elif path.suffix in (".parquet", ".csv"):
            from modelworks.collect.files import read_table_column

            yield from read_table_column(path, text_field)
        else:
            yield path.read_text(encoding="utf-8", errors="replace")


class Decontaminate(Filter):
    """Removes (action=drop) or only counts (action=flag) documents sharing an n-gram with the
    evaluation sets in `eval_paths`."""

    name = "decontaminate"

    def __init__(
        self,
        eval_paths: list[str] | None = None,
        n: int = 13,
        action: str = "drop",
        text_field: str = "text",
    ) -> None:
        super().__init__()
        if not eval_paths:
            raise ValueError("eval_paths: give at least one evaluation file or glob")
        if action not in ("drop", "flag"):
            raise ValueError(f"action: {action!r} is not drop or flag")
        self.n, self.action = n, action
        self.index: set[int] = set()
        self.lengths = {n}  # plus the lengths of eval texts shorter than n words
        for pattern in eval_paths:
            for text in read_eval_texts(pattern, text_field):
                n_words = len(words_of(text))
                if 0 < n_words < n:
                    self.lengths.add(n_words)
                self.index.update(ngram_hashes(text, n))
        self.stats["eval_ngrams"] = len(self.index)

    def filter(self, doc: dict) -> bool | tuple[bool, str]:
        text = doc["text"]
        if not any(h in self.index for m in self.lengths for h in ngram_hashes(text, m)):
            return True
        if self.action == "flag":
            self.stats["flagged"] += 1
            if len(self.examples.setdefault("flagged", [])) < 3:
                self.examples["flagged"].append({"id": doc["id"]})
            return True
        return False, "contaminated"


def test_overlap(train: Iterable[str], test: Iterable[str], n: int = 13, shown: int = 3) -> dict:
    """How many test texts share a word n-gram (a test text shorter than n words: all of its
    words, in order) with the training texts: the check a predefined test split gets against
    train. Reported, not removed: the split is the user's own."""
    tests = [t for t in test]
    lengths = {n} | {len(w) for w in map(words_of, tests) if 0 < len(w) < n}
    index: set[int] = set()
    for text in train:
        for m in lengths:
            index.update(ngram_hashes(text, m))
    hits, examples = 0, []
    for text in tests:
        if any(h in index for h in ngram_hashes(text, n)):
            hits += 1
            if len(examples) < shown:
                examples.append(text[:120])
    return {"n": n, "test_rows": len(tests), "sharing_ngram_with_train": hits, "examples": examples}
