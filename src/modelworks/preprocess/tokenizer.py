"""Byte-level BPE tokenizer training and loading, with Hugging Face `tokenizers`.

Byte-level pre-tokenisation means every string round-trips exactly: decode(encode(s)) == s.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from modelworks.errors import ModelworksError

EOT = "<|endoftext|>"


class TokenizerError(ModelworksError, ValueError):
    pass


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


def eot_id(tok: Tokenizer) -> int:
    tid = tok.token_to_id(EOT)
    if tid is None:
        raise TokenizerError(f"tokenizer has no {EOT} token")
    return tid
