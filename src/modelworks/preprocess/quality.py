"""Heuristic quality filters with the published thresholds as defaults.

Each follows the definition in datatrove (huggingface/datatrove, `pipeline/filters/`), which in
turn follows the papers:
- GopherQuality, GopherRepetition: Rae et al. 2021, "Scaling Language Models: Methods, Analysis &
  Insights from Training Gopher", appendix A (datatrove `gopher_quality_filter.py`,
  `gopher_repetition_filter.py`).
- C4Quality: Raffel et al. 2020, "Exploring the Limits of Transfer Learning" section 2.2
  (datatrove `c4_filters.py`, `C4QualityFilter`); it removes lines as well as documents.
- FineWebQuality: Penedo et al. 2024, "The FineWeb Datasets"
  (datatrove `fineweb_quality_filter.py`).

One difference: datatrove splits words with a language-specific tokenizer (nltk/spaCy); here a
regex splits words and punctuation apart (`\\w+` with inner - and ', or one symbol), as spaCy's
English tokenizer does on prose, and a regex counts sentences; this keeps the filters free of
heavy dependencies (benchmarks/preprocess.py measures the agreement with datatrove).
"""

from __future__ import annotations

import re
from collections import Counter

from modelworks.preprocess.steps import Filter

_WORD = re.compile(r"\w+(?:['\-]\w+)*|[^\w\s]")
PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~…–—«»“”‘’")
STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
END_PUNCTUATION = (".", "?", "!", '"', "'")
ELLIPSIS = "..."
# datatrove's TERMINAL_PUNCTUATION (FineWeb's line-end test), Basic Multilingual Plane part
TERMINAL_PUNCTUATION = tuple(
    "!.?։؝؞؟۔܀܁܂߹࠷࠹࠽࠾।॥၊။።፧፨᙮᜵᜶។៕៖៙៚᠃᠉᥄᥅᪨᪩᪪᪫᭚᭛᭞᭟᭽᭾᰻᰼᱾᱿‼‽⁇⁈⁉⸮⸼⹓⹔。꓿꘎꘏꛳꛷꡶꡷꣎꣏꤯꧈꧉꩝꩞꩟꫰꫱꯫﹒﹖﹗！．？｡"
)


def split_into_words(text: str) -> list[str]:
    return _WORD.findall(text)


def find_duplicates(items: list[str]) -> tuple[int, int]:
    """(number of repeated elements, characters in them): each repeat after the first counts."""
    seen: set[str] = set()
    dup_elements = dup_chars = 0
    for item in items:
        if item in seen:
            dup_elements += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    return dup_elements, dup_chars


def find_top_duplicate(ngrams: list[str]) -> int:
    """Characters covered by the most frequent n-gram (its length times its count)."""
    if not ngrams:
        return 0
    gram, count = Counter(ngrams).most_common(1)[0]
    return len(gram) * count


def find_all_duplicate(words: list[str], n: int) -> int:
    """Characters in n-grams that repeat an earlier one, scanning without overlap (Gopher)."""
    seen: set[str] = set()
    repeated = i = 0
    while i < len(words) - n + 1:
        gram = "".join(words[i : i + n])
        if gram in seen:
            repeated += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return repeated


class GopherQuality(Filter):
    """Gopher quality rules: word count, mean word length, symbol/word ratio, bullet and ellipsis
    lines, share of words with a letter, and a minimum of English stop words."""

    name = "gopher_quality"

    def __init__(
        self,
        min_doc_words: int | None = 50,
        max_doc_words: int | None = 100_000,
        min_avg_word_length: float | None = 3,
        max_avg_word_length: float | None = 10,
        max_symbol_word_ratio: float | None = 0.1,
        max_bullet_lines_ratio: float | None = 0.9,
        max_ellipsis_lines_ratio: float | None = 0.3,
        max_non_alpha_words_ratio: float | None = 0.8,
        min_stop_words: int | None = 2,
        stop_words: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.min_doc_words, self.max_doc_words = min_doc_words, max_doc_words
        self.min_avg_word_length, self.max_avg_word_length = (
            min_avg_word_length,
            max_avg_word_length,
        )
        self.max_symbol_word_ratio = max_symbol_word_ratio
        self.max_bullet_lines_ratio = max_bullet_lines_ratio
        self.max_ellipsis_lines_ratio = max_ellipsis_lines_ratio
        self.max_non_alpha_words_ratio = max_non_alpha_words_ratio
        self.min_stop_words = min_stop_words
        self.stop_words = set(stop_words or STOP_WORDS)

    def filter(self, doc: dict) -> bool | tuple[bool, str]:
        text = doc["text"]
        words = split_into_words(text)
        n_words = len(words)
        non_symbol = [w for w in words if any(ch not in PUNCTUATION for ch in w)]
        n_non_symbol = len(non_symbol)
        if self.min_doc_words and n_non_symbol < self.min_doc_words:
            return False, "gopher_short_doc"
        if self.max_doc_words and n_non_symbol > self.max_doc_words:
            return False, "gopher_long_doc"
        if n_non_symbol == 0:
            return False, "gopher_short_doc"
        avg = sum(map(len, non_symbol)) / n_non_symbol
        if self.min_avg_word_length and avg < self.min_avg_word_length:
            return False, "gopher_below_avg_threshold"
        if self.max_avg_word_length and avg > self.max_avg_word_length:
            return False, "gopher_above_avg_threshold"
        if self.max_symbol_word_ratio:
            symbols = text.count("#") + text.count(ELLIPSIS) + text.count("…")
            if symbols / n_words > self.max_symbol_word_ratio:
                return False, "gopher_too_many_symbols"
        lines = text.splitlines() or [""]
        if self.max_bullet_lines_ratio:
            bullets = sum(ln.lstrip().startswith(("•", "-")) for ln in lines)
            if bullets / len(lines) > self.max_bullet_lines_ratio:
                return False, "gopher_too_many_bullets"
        if self.max_ellipsis_lines_ratio:
            ellipsis = sum(ln.rstrip().endswith((ELLIPSIS, "…")) for ln in lines)
            if ellipsis / len(lines) > self.max_ellipsis_lines_ratio:
                return False, "gopher_too_many_end_ellipsis"
        if self.max_non_alpha_words_ratio:
            alpha = sum(any(c.isalpha() for c in w) for w in words)
            if alpha / n_words < self.max_non_alpha_words_ratio:
                return False, "gopher_below_alpha_threshold"
        stops = sum(w.lower() in self.stop_words for w in words)
        if self.min_stop_words and stops < self.min_stop_words:
            return False, "gopher_enough_stop_words"
        return True


class GopherRepetition(Filter):
    """Gopher repetition rules: duplicated lines and paragraphs (by count and by characters), the
    share of text covered by the top 2-4-gram, and by repeated 5-10-grams."""

    name = "gopher_repetition"

    def __init__(
        self,
        dup_line_frac: float | None = 0.3,
        dup_para_frac: float | None = 0.3,
        dup_line_char_frac: float | None = 0.2,
        dup_para_char_frac: float | None = 0.2,
        top_n_grams: dict[int, float] | None = None,
        dup_n_grams: dict[int, float] | None = None,
    ) -> None:
        super().__init__()
        self.dup_line_frac, self.dup_para_frac = dup_line_frac, dup_para_frac
        self.dup_line_char_frac, self.dup_para_char_frac = dup_line_char_frac, dup_para_char_frac
        self.top_n_grams = top_n_grams or {2: 0.2, 3: 0.18, 4: 0.16}
        self.dup_n_grams = dup_n_grams or {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}

    def filter(self, doc: dict) -> bool | tuple[bool, str]:
        text = doc["text"]
        if not text:
            return False, "gopher_empty"
        paragraphs = re.split(r"\n{2,}", text.strip())
        dup, chars = find_duplicates(paragraphs)
        if self.dup_para_frac and dup / len(paragraphs) > self.dup_para_frac:
            return False, "dup_para_frac"
        if self.dup_para_char_frac and chars / len(text) > self.dup_para_char_frac:
            return False, "dup_para_char_frac"
        lines = re.split(r"\n+", text)
        dup, chars = find_duplicates(lines)
        if self.dup_line_frac and dup / len(lines) > self.dup_line_frac:
            return False, "dup_line_frac"
        if self.dup_line_char_frac and chars / len(text) > self.dup_line_char_frac:
            return False, "dup_line_char_frac"
        words = split_into_words(text)
        for n, frac in sorted(self.top_n_grams.items()):
            grams = [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
            if find_top_duplicate(grams) / len(text) > frac:
                return False, f"top_{n}_gram"
        for n, frac in sorted(self.dup_n_grams.items()):
            if find_all_duplicate(words, n) / len(text) > frac:
                return False, f"duplicated_{n}_n_grams"
        return True


_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
_POLICY = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")


class C4Quality(Filter):
    """C4's rules, line by line: drop lines without terminal punctuation, with fewer than 3 words,
    with a word over 1000 characters, mentioning javascript or a cookie/privacy policy; drop the
    document for "lorem ipsum", a curly bracket, or fewer than 5 sentences left. Rewrites the text
    to the kept lines (citation markers like [1] removed)."""

    name = "c4_quality"

    def __init__(
        self,
        split_paragraph: bool = True,
        remove_citations: bool = True,
        filter_no_terminal_punct: bool = True,
        min_num_sentences: int = 5,
        min_words_per_line: int = 3,
        max_word_length: int = 1000,
        filter_lorem_ipsum: bool = True,
        filter_javascript: bool = True,
        filter_curly_bracket: bool = True,
        filter_policy: bool = True,
    ) -> None:
        super().__init__()
        self.split_paragraph, self.remove_citations = split_paragraph, remove_citations
        self.filter_no_terminal_punct = filter_no_terminal_punct
        self.min_num_sentences, self.min_words_per_line = min_num_sentences, min_words_per_line
        self.max_word_length = max_word_length
        self.filter_lorem_ipsum, self.filter_javascript = filter_lorem_ipsum, filter_javascript
        self.filter_curly_bracket, self.filter_policy = filter_curly_bracket, filter_policy

    def filter(self, doc: dict) -> bool | tuple[bool, str]:
        text = doc["text"]
        lines = text.splitlines() if self.split_paragraph else _SENTENCE_END.split(text)
        kept, n_sentences = [], 0
        for line in lines:
            line = line.strip()
            words = line.split()
            if self.remove_citations:
                line = _CITATION.sub("", line)
            if self.max_word_length and any(len(w) > self.max_word_length for w in words):
                continue
            if self.filter_no_terminal_punct and (
                not line.endswith(END_PUNCTUATION) or line.endswith(ELLIPSIS)
            ):
                continue
            if len(words) < self.min_words_per_line:
                continue
            low = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in low:
                return False, "lorem_ipsum"
            if self.filter_javascript and "javascript" in low:
                continue
            if self.filter_curly_bracket and "{" in line:
                return False, "curly_bracket"
            if self.filter_policy and any(p in low for p in _POLICY):
                continue
            kept.append(line)
            # a kept line ends in terminal punctuation, so it holds at least one sentence
            n_sentences += max(1, len(_SENTENCE_END.findall(line)))
        new_text = "\n".join(kept)
        if self.min_num_sentences and n_sentences < self.min_num_sentences:
            return False, "too_few_sentences"
        self.stats["lines_removed"] += len(lines) - len(kept)
        doc["text"] = new_text
        return True


class FineWebQuality(Filter):
    """FineWeb's rules: share of lines ending in punctuation, share of short lines, characters in
    duplicated lines, and newlines per word (list-like pages)."""

    name = "fineweb_quality"

    def __init__(
        self,
        line_punct_thr: float = 0.12,
        line_punct_exclude_zero: bool = False,
        short_line_thr: float = 0.67,
        short_line_length: int = 30,
        char_duplicates_ratio: float = 0.01,
        new_line_ratio: float = 0.3,
    ) -> None:
        super().__init__()
        self.line_punct_thr, self.line_punct_exclude_zero = line_punct_thr, line_punct_exclude_zero
        self.short_line_thr, self.short_line_length = short_line_thr, short_line_length
        self.char_duplicates_ratio, self.new_line_ratio = char_duplicates_ratio, new_line_ratio

    def filter(self, doc: dict) -> bool | tuple[bool, str]:
        text = doc["text"]
        lines = [ln for ln in text.split("\n") if ln.strip()]
        if not lines:
            return False, "empty"
        ratio = sum(ln.endswith(TERMINAL_PUNCTUATION) for ln in lines) / len(lines)
        if ratio < self.line_punct_thr and not (ratio == 0 and self.line_punct_exclude_zero):
            return False, "line_punct_ratio"
        ratio = sum(len(ln) <= self.short_line_length for ln in lines) / len(lines)
        if ratio > self.short_line_thr:
            return False, "short_line_ratio"
        ratio = find_duplicates(lines)[1] / max(1, len(text.replace("\n", "")))
        if ratio > self.char_duplicates_ratio:
            return False, "char_dup_ratio"
        words = split_into_words(text)
        if text.count("\n") / max(1, len(words)) > self.new_line_ratio:
            return False, "list_ratio"
        return True
