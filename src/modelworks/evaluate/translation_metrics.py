"""Translation metrics (BLEU and chrF with sacrebleu, bootstrap CIs) and a dictionary baseline.

Scores are corpus-level, as sacrebleu computes them: `corpus_scores` gives exactly
`sacrebleu.corpus_bleu(hyps, [refs], tokenize=...)` and `corpus_chrf(hyps, [refs])`. The 95%
intervals resample sentences with replacement and recompute the corpus score from the summed
per-sentence statistics (n-gram matches and lengths), which is how sacrebleu's own paired
bootstrap works, so 1,000 resamples cost milliseconds.

The baseline translates word by word with a dictionary read off the training pairs: for every
source word (lowercased word tokens; characters for Chinese/Japanese sources) the target unit
(a word; a character or character pair for Chinese/Japanese targets) that co-occurs with it in the
most sentence pairs relative to both their frequencies (the Dice coefficient). It knows the words
but nothing of order, inflection or structure: the floor a trained translator must clear.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def is_cjk(texts: list[str], share: float = 0.3) -> bool:
    """Whether at least `share` of the non-space characters are Chinese/Japanese."""
    chars = "".join(texts).replace(" ", "")
    return bool(chars) and len(_CJK.findall(chars)) / len(chars) >= share


def bleu_tokenize(choice: str, references: list[str]) -> str:
    """sacrebleu's tokenizer name: `choice`, or for `auto` zh when the references are Chinese
    (or Japanese) text, else 13a (sacrebleu's default for space-separated languages)."""
    if choice != "auto":
        return choice
    return "zh" if is_cjk(references) else "13a"


def corpus_scores(
    hyps: list[str], refs: list[str], tokenize: str, n_boot: int = 1000, seed: int = 0
) -> dict:
    """BLEU and chrF (0-100) of `hyps` against one reference each, with bootstrap 95% CIs."""
    try:
        from sacrebleu.metrics import BLEU, CHRF
    except ImportError:
        raise ImportError(
            "translation metrics need sacrebleu: pip install -e '.[nlp]' (or sacrebleu)"
        ) from None
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses for {len(refs)} references")
    out: dict = {}
    for name, metric in (("bleu", BLEU(tokenize=tokenize)), ("chrf", CHRF())):
        stats = np.array(metric._extract_corpus_statistics(hyps, [refs]), dtype=np.int64)
        score = metric._compute_score_from_stats(stats.sum(0).tolist())
        out[name] = float(score.score)
        out[f"{name}_signature"] = str(metric.get_signature())
        if n_boot and len(hyps) > 1:
            rng = np.random.default_rng(seed)
            values = [
                metric._compute_score_from_stats(
                    stats[rng.integers(0, len(hyps), len(hyps))].sum(0).tolist()
                ).score
                for _ in range(n_boot)
            ]
            lo, hi = np.quantile(values, [0.025, 0.975])
            out[f"{name}_ci"] = [float(lo), float(hi)]
    return out


def _source_units(text: str, cjk: bool) -> list[str]:
    text = text.lower()
    return [c for c in text if not c.isspace()] if cjk else _WORD.findall(text)


def _target_units(text: str, cjk: bool) -> list[str]:
    if not cjk:
        return _WORD.findall(text)
    chars = [c for c in text if not c.isspace()]
    return chars + [a + b for a, b in zip(chars, chars[1:], strict=False)]


class DictionaryBaseline:
    """Word-by-word translation with a Dice-aligned dictionary from the training pairs."""

    def __init__(self, sources: list[str], targets: list[str], min_count: int = 2) -> None:
        self.src_cjk, self.tgt_cjk = is_cjk(sources), is_cjk(targets)
        src_count: Counter = Counter()
        tgt_count: Counter = Counter()
        pair_count: Counter = Counter()
        for s, t in zip(sources, targets, strict=True):
            su = set(_source_units(s, self.src_cjk))
            tu = set(_target_units(t, self.tgt_cjk))
            src_count.update(su)
            tgt_count.update(tu)
            pair_count.update((a, b) for a in su for b in tu)
        best: dict[str, tuple[float, int, str]] = {}
        for (a, b), n in pair_count.items():
            if n < min_count:
                continue
            dice = 2 * n / (src_count[a] + tgt_count[b])
            key = (dice, n, b)
            if a not in best or key > best[a]:
                best[a] = key
        self.table = {a: v[2] for a, v in best.items()}

    def translate(self, source: str) -> str:
        words = [self.table[w] for w in _source_units(source, self.src_cjk) if w in self.table]
        out = [w for i, w in enumerate(words) if i == 0 or w != words[i - 1]]
        return ("" if self.tgt_cjk else " ").join(out)
