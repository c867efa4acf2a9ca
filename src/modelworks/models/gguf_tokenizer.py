"""A GGUF file's tokenizer as a Hugging Face `tokenizers.Tokenizer`, and back into GGUF metadata.

GGUF carries no tokenizer.json: the vocabulary, merges, token types and special ids are metadata
under llama.cpp's keys (`tokenizer.ggml.*`). Byte-level BPE (`tokenizer.ggml.model = gpt2`, used
by SmolLM2, Llama 3, Qwen, ...) is rebuilt here; its pre-tokenizer is chosen by
`tokenizer.ggml.pre` as llama.cpp does (SmolLM's splits digits one by one, Llama 3's uses its own
regex, anything else GPT-2's). Tokens typed CONTROL (3) become special added tokens, USER_DEFINED
(4) plain added tokens, so `<|im_start|>` stays whole. SentencePiece files (`llama` model) are
refused for now.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from modelworks.errors import GGUFError

CONTROL, USER_DEFINED = 3, 4
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_PRE = ("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "falcon3", "dbrx")


def _pre_tokenizer(pre: str | None):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":  # SmolLM's tokenizer.json: digits one by one, then GPT-2's split
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in _LLAMA3_PRE:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    return byte_level  # "gpt2", "default" and the rest: GPT-2's regex


def tokenizer_from_gguf(reader, where: str | Path) -> Tokenizer:
    from modelworks.models.gguf import field

    kind = field(reader, "tokenizer.ggml.model")
    if kind is None:
        raise GGUFError(f"{where}: has no tokenizer (tokenizer.ggml.model is missing)")
    if kind != "gpt2":
        raise GGUFError(
            f"{where}: tokenizer model {kind!r} is not supported; supported: gpt2 (byte-level BPE)"
        )
    tokens = field(reader, "tokenizer.ggml.tokens")
    merges = field(reader, "tokenizer.ggml.merges")
    if not tokens:
        raise GGUFError(f"{where}: the tokenizer has no vocabulary (tokenizer.ggml.tokens)")
    if not merges:
        raise GGUFError(
            f"{where}: the byte-level BPE tokenizer has no merges (tokenizer.ggml.merges)"
        )
    types = field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(types) != len(tokens):
        raise GGUFError(f"{where}: {len(types)} token types for {len(tokens)} tokens; corrupt file")
    pre = field(reader, "tokenizer.ggml.pre")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    pairs = []
    for m in merges:
        a, sep, b = m.partition(" ")
        if not sep:
            raise GGUFError(f"{where}: malformed merge {m!r} in tokenizer.ggml.merges")
        pairs.append((a, b))
    tok = Tokenizer(models.BPE(vocab, pairs, ignore_merges=pre in _LLAMA3_PRE))
    tok.pre_tokenizer = _pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    special = [t for t, ty in zip(tokens, types, strict=True) if int(ty) == CONTROL]
    plain = [t for t, ty in zip(tokens, types, strict=True) if int(ty) == USER_DEFINED]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain])
    return tok


def tokenizer_metadata(tokenizer_json: str | Path) -> dict:
    """What a GGUF writer needs from a byte-level BPE tokenizer.json: model, pre, tokens, types
    and merges (as "a b" strings)."""
    path = Path(tokenizer_json)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise GGUFError(f"{path}: not a readable tokenizer.json ({e})") from None
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise GGUFError(f"{path}: only byte-level BPE tokenizers export to GGUF")
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    for added in data.get("added_tokens") or []:
        vocab.setdefault(added["content"], added["id"])
    if not vocab or sorted(vocab.values()) != list(range(len(vocab))):
        raise GGUFError(f"{path}: token ids are not 0..N-1; cannot write a GGUF vocabulary")
    tokens = [""] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    specials = {a["content"]: a.get("special", False) for a in data.get("added_tokens") or []}
    types = [(CONTROL if specials[t] else USER_DEFINED) if t in specials else 1 for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    if not merges:
        raise GGUFError(f"{path}: the tokenizer has no merges; a GGUF BPE vocabulary needs them")
    pre = "smollm" if "Digits" in json.dumps(data.get("pre_tokenizer")) else "gpt2"
    return {"model": "gpt2", "pre": pre, "tokens": tokens, "types": types, "merges": merges}
