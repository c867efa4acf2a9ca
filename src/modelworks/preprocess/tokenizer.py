"""Byte-level BPE tokenizer training and loading, with Hugging Face `tokenizers`.

Byte-level pre-tokenisation means every string round-trips exactly: decode(encode(s)) == s.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from modelworks.errors import TokenizerError

EOT = "<|endoftext|>"


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    got = tok.get_vocab_size()
    if got < vocab_size:
        raise TokenizerError(
            f"preprocess.vocab_size={vocab_size} is larger than the corpus supports: BPE "
            f"training found only {got} tokens; lower preprocess.vocab_size or add data"
        )
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"tokenizer file {path} does not exist")
    return Tokenizer.from_file(str(path))


def eot_id(tok: Tokenizer, folder: str | Path | None = None) -> int:
    """The end-of-text token that separates documents: ours, or else the `eos_token` the
    tokenizer_config.json in `folder` names (a Hugging Face tokenizer)."""
    tid = tok.token_to_id(EOT)
    if tid is None and folder is not None:
        eos = _eos_token(Path(folder) / "tokenizer_config.json")
        tid = tok.token_to_id(eos) if eos else None
    if tid is None:
        where = f" (and {folder}/tokenizer_config.json names no eos_token it has)" if folder else ""
        raise TokenizerError(f"tokenizer has no {EOT} token{where}")
    return tid


def _eos_token(path: Path) -> str | None:
    try:
        eos = json.loads(path.read_text()).get("eos_token")
    except (OSError, ValueError, AttributeError):
        return None
    return eos.get("content") if isinstance(eos, dict) else eos if isinstance(eos, str) else None


def find_tokenizer(spec: str | Path) -> Path:
    """The tokenizer.json that `spec` names: the file itself, or the one in a model or Hugging
    Face folder, or a run folder's (its fine-tuned model's, else its pretrained one's, else the
    one its preprocess trained)."""
    path = Path(spec)
    if path.is_file():
        return path
    candidates = [
        path / "tokenizer.json",
        path / "finetune" / "tokenizer.json",
        path / "pretrain" / "tokenizer.json",
        path / "preprocess" / "tokenizer.json",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise TokenizerError(
        f"preprocess.tokenizer={str(spec)!r}: no tokenizer.json there (a file, or a run, model "
        "or Hugging Face folder with one); use `train` to train a new one"
    )
