"""The model a fine-tune (or a chat/SFT task) starts from, named by `finetune.from`: this run's
pretrain, another run folder (its finetune/ or else pretrain/ model), a modelworks model folder
(config.json + model.safetensors), a local Hugging Face folder (BERT family: models/encoder.py;
Llama family: models/hf.py), `minilm`, or a Llama GGUF: a .gguf file or a ready model's name
(`smollm2-135m-instruct`, models/catalogue.py), dequantized to float32 (models/gguf.py). Read
only, never written. Shared by finetune/ and tasks/, so it lives in neither.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from modelworks.artifacts import require_stage
from modelworks.config import Config
from modelworks.errors import ConfigError


@dataclass
class Base:
    model: nn.Module
    tokenizer: object | None  # a tokenizers.Tokenizer, when the base comes with one
    folder: Path  # where it was read from (never written; a GGUF base: the .gguf file)
    kind: str  # modelworks, bert, llama or gguf
    # a GGUF base's (start token id, end token ids, chat template); None otherwise
    chat: tuple[int, set[int], str | None] | None = None
    add_bos: bool = True  # prompts start with the start token (a GGUF may say they do not)


def resolve_base_folder(cfg: Config) -> Path:
    spec = cfg.finetune.from_
    run_dir = cfg.run_dir
    if spec == "pretrain":
        require_stage(run_dir, "pretrain", "finetune")
        return run_dir / "pretrain"
    from modelworks.models.catalogue import resolve_target
    from modelworks.models.encoder import MINILM_NAMES, minilm_path
    from modelworks.models.gguf import is_gguf

    if spec.lower() in MINILM_NAMES:
        return minilm_path()
    folder = resolve_target(spec)  # a ready model's name: its file in the cache
    if is_gguf(folder):
        return folder
    if not folder.is_dir():
        raise ConfigError(
            f"finetune.from={spec!r}: not a folder; use pretrain, minilm, a run folder, a model "
            "folder, a local Hugging Face folder, a .gguf file or a ready model's name"
        )
    for stage in ("finetune", "pretrain"):  # a run folder: its latest model
        if (folder / stage / "manifest.json").is_file():
            folder = folder / stage
            break
    mine = {(run_dir / s).resolve() for s in ("finetune", "finetune.partial")}
    if folder.resolve() in mine:
        raise ConfigError(
            f"finetune.from={spec!r} is this run's own finetune output, which the fine-tune "
            "would overwrite; copy it elsewhere, or give the run another name"
        )
    return folder


def load_base(cfg: Config) -> Base:
    from tokenizers import Tokenizer

    from modelworks.models.encoder import import_bert, is_bert_folder

    folder = resolve_base_folder(cfg)
    if folder.suffix.lower() == ".gguf":  # dequantized to float32 (models/gguf.py)
        from modelworks.models.gguf import chat_tokens, load_gguf, open_gguf
        from modelworks.models.gguf_tokenizer import tokenizer_from_gguf

        reader = open_gguf(folder)
        bos, eos, template, add_bos = chat_tokens(reader)
        model = load_gguf(folder, cfg.finetune.seq_len, reader)
        bos = bos if bos is not None else min(eos or {0})
        chat = (bos, eos or {bos}, template)
        tok = tokenizer_from_gguf(reader, folder)
        return Base(model, tok, folder, "gguf", chat, add_bos)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"finetune.from: {folder} has no config.json; it is not a model folder")
    try:
        meta = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{cfg_path}: not readable JSON ({e})") from None
    if "name" in meta and "config" in meta:
        from modelworks.train.checkpoint import load_model

        model, kind = load_model(folder), "modelworks"
    elif is_bert_folder(folder):
        model, kind = import_bert(folder), "bert"
    else:
        from modelworks.models.hf import import_hf

        model, kind = import_hf(folder, context_len=cfg.finetune.seq_len), "llama"
    tok = None
    for candidate in (folder / "tokenizer.json", folder.parent / "preprocess" / "tokenizer.json"):
        if candidate.is_file():
            tok = Tokenizer.from_file(str(candidate))
            break
    return Base(model, tok, folder, kind)
