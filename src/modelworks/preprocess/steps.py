"""Preprocessing steps, datatrove-style: each has one job and a `run(docs) -> docs` generator.

Filters implement `filter(doc) -> bool | (bool, reason)`; every step counts documents in and out.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator


class Step:
    name = "step"

    def __init__(self) -> None:
        self.stats: Counter = Counter()

    def run(self, docs: Iterable[dict]) -> Iterator[dict]:
        for doc in docs:
            self.stats["in"] += 1
            out = self.apply(doc)
            if out is not None:
                self.stats["out"] += 1
                yield out

    def apply(self, doc: dict) -> dict | None:
        raise NotImplementedError


class Filter(Step):
    def apply(self, doc: dict) -> dict | None:
        verdict = self.filter(doc)
        keep, reason = verdict if isinstance(verdict, tuple) else (verdict, self.name)
        if not keep:
            self.stats[f"removed:{reason}"] += 1
            return None
        return doc

    def filter(self, doc: dict) -> bool | tuple[bool, str]:
        raise NotImplementedError


class Normalize(Step):
    """Unicode normal form (NFC keeps text as typed; NFKC also folds compatibility forms)."""

    name = "normalize"

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form

    def apply(self, doc: dict) -> dict:
        if self.form != "none":
            doc["text"] = unicodedata.normalize(self.form, doc["text"])
        return doc


_TRAILING = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class CleanWhitespace(Step):
    """Unify newlines, drop control characters and trailing spaces, squeeze blank-line runs.

    Leading indentation is kept: it carries meaning in code and reStructuredText.
    """

    name = "whitespace"

    def apply(self, doc: dict) -> dict:
        text = doc["text"].replace("\r\n", "\n").replace("\r", "\n")
        text = _CONTROL.sub("", text)
        text = _TRAILING.sub("\n", text)
        doc["text"] = _BLANK_RUNS.sub("\n\n", text).strip()
        return doc


class MinLength(Filter):
    name = "min_length"

    def __init__(self, min_chars: int) -> None:
        super().__init__()
        self.min_chars = min_chars

    def filter(self, doc: dict) -> bool:
        return len(doc["text"]) >= self.min_chars


class ExactDedup(Filter):
    """Keeps the first document of each normalised text (case- and whitespace-insensitive)."""

    name = "exact_dedup"

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[bytes] = set()

    def filter(self, doc: dict) -> bool:
        key = " ".join(doc["text"].lower().split())
        digest = hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()
        if digest in self.seen:
            return False
        self.seen.add(digest)
        return True


def is_validation(doc_id: str, fraction: float, seed: int) -> bool:
    """Deterministic split by document id: the same document lands in the same split every run,
    whatever the order or the rest of the corpus."""
    h = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction
