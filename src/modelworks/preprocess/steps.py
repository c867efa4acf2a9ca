"""Preprocessing steps, datatrove-style: each has one job and a `run(docs) -> docs` generator.

Filters implement `filter(doc) -> bool | (bool, reason)`; a removed document goes to the step's
`on_reject(doc, reason)` hook (the runner points it at `rejected/<step>.parquet`). Every step
counts documents and bytes in and out, and keeps a few examples of what it kept and removed.
Steps that must see the whole corpus before deciding (near-dedup) set `needs_pass = True` and
get `prepare(read)`, where each `read()` streams the corpus again.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

N_EXAMPLES = 3  # examples kept per step (and per removal reason) for the report
SNIPPET = 160  # characters of text shown per example


def _nbytes(doc: dict) -> int:
    return len(doc["text"].encode("utf-8", errors="replace"))


def snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET else text[: SNIPPET - 1] + "…"


class Step:
    name = "step"
    needs_pass = False  # True: `prepare(docs)` sees every document before `run`

    def __init__(self) -> None:
        self.stats: Counter = Counter()
        self.examples: dict[str, list[dict]] = {"kept": [], "removed": [], "changed": []}
        self.on_reject: Callable[[dict, str], None] = lambda doc, reason: None

    def prepare(self, read: Callable[[], Iterable[dict]]) -> None:
        """Sees the corpus before `run` (only when `needs_pass`): `read()` gives a fresh pass."""

    def run(self, docs: Iterable[dict]) -> Iterator[dict]:
        for doc in docs:
            self.stats["in"] += 1
            nbytes = _nbytes(doc)
            self.stats["bytes_in"] += nbytes
            before = doc["text"]
            out = self.apply(doc)
            if out is not None:
                self.stats["out"] += 1
                self.stats["bytes_out"] += _nbytes(out)
                if out["text"] != before:
                    self.stats["changed"] += 1
                    self._example("changed", out, before=snippet(before))
                else:
                    self._example("kept", out)
                yield out
            else:
                self.stats["bytes_removed"] += nbytes

    def apply(self, doc: dict) -> dict | None:
        raise NotImplementedError

    def _example(self, kind: str, doc: dict, **extra) -> None:
        if len(self.examples[kind]) < N_EXAMPLES:
            self.examples[kind].append({"id": doc["id"], "text": snippet(doc["text"]), **extra})

    def report(self) -> dict:
        """The step's row in stats.json: counts, then non-empty example lists."""
        row = {"step": self.name, **dict(self.stats)}
        for key in ("in", "out", "bytes_in", "bytes_out"):
            row.setdefault(key, 0)
        row["examples"] = {k: v for k, v in self.examples.items() if v}
        return row


class Filter(Step):
    def apply(self, doc: dict) -> dict | None:
        verdict = self.filter(doc)
        keep, reason = verdict if isinstance(verdict, tuple) else (verdict, self.name)
        if not keep:
            self.stats[f"removed:{reason}"] += 1
            removed = [e for e in self.examples["removed"] if e["reason"] == reason]
            if len(removed) < N_EXAMPLES:
                self.examples["removed"].append(
                    {"id": doc["id"], "reason": reason, "text": snippet(doc["text"])}
                )
            self.on_reject(doc, reason)
            return None
        return doc

    def filter(self, doc: dict) -> bool | tuple[bool, str]:
        raise NotImplementedError


class Normalize(Step):
    """Unicode normal form (NFC keeps text as typed; NFKC also folds compatibility forms)."""

    name = "normalize"

    def __init__(self, form: str = "NFC") -> None:
        super().__init__()
        if form not in ("NFC", "NFKC", "NFD", "NFKD", "none"):
            raise ValueError(f"form: {form!r} is not one of NFC, NFKC, NFD, NFKD, none")
        self.form = form

    def apply(self, doc: dict) -> dict:
        if self.form != "none":
            doc["text"] = unicodedata.normalize(self.form, doc["text"])
        return doc


class FixMojibake(Step):
    """Repairs mojibake and broken Unicode with ftfy (`ftfy.fix_text`): 'CafÃ©' -> 'Café'.

    Needs the `ftfy` package (in the `data` extra).
    """

    name = "fix_mojibake"

    def __init__(self) -> None:
        super().__init__()
        try:
            import ftfy
        except ImportError:
            raise ImportError("step fix_mojibake needs ftfy: pip install ftfy") from None
        self._fix = ftfy.fix_text

    def apply(self, doc: dict) -> dict:
        doc["text"] = self._fix(doc["text"])
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


_BOILERPLATE = (
    "cookie",
    "privacy policy",
    "terms of use",
    "terms of service",
    "all rights reserved",
    "subscribe to our newsletter",
    "javascript",
    "sign up",
    "log in",
    "share this",
)


class RemoveBoilerplateLines(Step):
    """Drops short lines made of navigation or legal boilerplate ("Accept cookies", "Log in").

    A line goes when it is shorter than `max_words` words and contains one of `phrases`
    (case-insensitive); long lines that merely mention a phrase stay.
    """

    name = "boilerplate_lines"

    def __init__(self, phrases: list[str] | None = None, max_words: int = 12) -> None:
        super().__init__()
        self.phrases = tuple(p.lower() for p in (phrases or _BOILERPLATE))
        self.max_words = max_words

    def apply(self, doc: dict) -> dict:
        kept = []
        for line in doc["text"].split("\n"):
            low = line.lower()
            if len(line.split()) < self.max_words and any(p in low for p in self.phrases):
                self.stats["lines_removed"] += 1
                continue
            kept.append(line)
        doc["text"] = "\n".join(kept)
        return doc


class MinLength(Filter):
    name = "min_length"

    def __init__(self, min_chars: int = 200) -> None:
        super().__init__()
        self.min_chars = min_chars

    def filter(self, doc: dict) -> bool:
        return len(doc["text"]) >= self.min_chars


def exact_key(text: str) -> bytes:
    """The normalised hash two texts share when they differ only in case and whitespace."""
    key = " ".join(text.lower().split())
    return hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()


class ExactDedup(Filter):
    """Keeps the first document of each normalised text (case- and whitespace-insensitive).

    Memory: 16 bytes per distinct document (about 16 MB per million documents).
    """

    name = "exact_dedup"

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[bytes] = set()
        self._remove = None

    def use_removals(self, remove) -> None:
        """Verdicts computed across shards (preprocess/dedup.py): True = remove, in order."""
        self._remove, self._index = remove, 0

    def filter(self, doc: dict) -> bool:
        if self._remove is not None:
            self._index += 1
            return not self._remove[self._index - 1]
        digest = exact_key(doc["text"])
        if digest in self.seen:
            return False
        self.seen.add(digest)
        return True


def split_score(doc_id: str, seed: int) -> float:
    """A document's place in [0, 1) for the deterministic split: below the fraction is val."""
    h = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def is_validation(doc_id: str, fraction: float, seed: int) -> bool:
    """Deterministic split by document id: the same document lands in the same split every run,
    whatever the order or the rest of the corpus."""
    return split_score(doc_id, seed) < fraction
