"""Hugging Face export of a text classifier built on our encoder (models/encoder.py + a head).

`export_hf_classifier(model, out_dir, tokenizer_json, classes, max_len)` writes a folder that

    AutoModelForSequenceClassification.from_pretrained(out_dir, trust_remote_code=True)
    AutoTokenizer.from_pretrained(out_dir)

load, with `id2label`/`label2id` from the run's label names. The body's tensors take BERT's names
(the inverse of encoder.py's import map); the head is the small `modeling_modelworks.py` copied
into the folder (see hf_modeling_encoder.py for why no stock BERT head fits, and why it needs
trust_remote_code). The tokenizer is the run's, without its fixed padding (a MiniLM tokenizer.json
pads every text to 128), cutting texts to `max_len` tokens as modelworks does when it classifies,
and returning no token_type_ids (the model was trained with segment 0 only).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from modelworks.artifacts import atomic_write_json, staged_folder
from modelworks.errors import HFError
from modelworks.models.encoder import _LAYER_NAMES, _TOP_NAMES, Encoder, our_name

REMOTE_CODE = Path(__file__).with_name("hf_modeling_encoder.py")
_FILES = {
    "config.json",
    "model.safetensors",
    "modeling_modelworks.py",
    "tokenizer.json",
    "tokenizer_config.json",
}


def bert_names(model: Encoder) -> dict[str, str]:
    """Our parameter name -> the tensor name BertModel (under `bert.`) or the head reads."""
    top = {ours: theirs for theirs, ours in _TOP_NAMES.items()}
    layer = {ours: theirs for theirs, ours in _LAYER_NAMES.items()}
    out = {}
    for name in model.state_dict():
        module, _, leaf = name.rpartition(".")
        if module == "head":
            out[name] = f"classifier.{leaf}"
            continue
        theirs = None
        if module in top:
            theirs = f"bert.{top[module]}.{leaf}"
        elif module.startswith("layers."):
            idx, _, rest = module.removeprefix("layers.").partition(".")
            if rest in layer:
                theirs = f"bert.encoder.layer.{idx}.{layer[rest]}.{leaf}"
        if theirs is None or our_name(theirs) != name:
            raise HFError(
                f"model has parameters with no BERT equivalent, e.g. {name!r}; merge or remove "
                f"adapters (LoRA) before export"
            )
        out[name] = theirs
    return out


def export_hf_classifier(
    model: Encoder,
    out_dir: str | Path,
    tokenizer_json: str | Path,
    classes: list[str],
    max_len: int,
) -> Path:
    """Write the classifier `model` as a Hugging Face folder (see the module docstring)."""
    cfg, out_dir = model.cfg, Path(out_dir)
    if model.head is None or cfg.n_classes != len(classes):
        raise HFError(
            f"the encoder has {cfg.n_classes} classes but the run names {len(classes)} labels"
        )
    tok_str, special = _tokenizer(Path(tokenizer_json), cfg.vocab_size, max_len)
    state = model.state_dict()
    tensors = {
        theirs: state[ours].detach().cpu().contiguous()
        for ours, theirs in bert_names(model).items()
    }
    if out_dir.is_file() or (
        out_dir.is_dir() and not all(p.name in _FILES for p in out_dir.iterdir())
    ):
        raise HFError(
            f"{out_dir} exists and is not an earlier export; choose a new or empty folder"
        )
    with staged_folder(out_dir) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        pad_id = special.pop("pad_token_id")
        atomic_write_json(tmp / "config.json", _config(model, classes, pad_id))
        shutil.copyfile(REMOTE_CODE, tmp / "modeling_modelworks.py")
        (tmp / "tokenizer.json").write_text(tok_str)
        atomic_write_json(
            tmp / "tokenizer_config.json",
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                **special,
                "model_max_length": max_len,
                "model_input_names": ["input_ids", "attention_mask"],
                "padding_side": "right",
                "truncation_side": "right",
                "clean_up_tokenization_spaces": False,
            },
        )
    return out_dir


def _config(model: Encoder, classes: list[str], pad_id: int) -> dict[str, Any]:
    cfg = model.cfg
    module = "modeling_modelworks"
    dtype = str(model.tok_emb.weight.dtype).removeprefix("torch.")
    return {
        "architectures": ["ModelworksEncoderForSequenceClassification"],
        "model_type": "modelworks_encoder",
        "auto_map": {
            "AutoConfig": f"{module}.ModelworksEncoderConfig",
            "AutoModelForSequenceClassification": (
                f"{module}.ModelworksEncoderForSequenceClassification"
            ),
        },
        "classifier_pooling": cfg.pooling,
        "id2label": {str(i): c for i, c in enumerate(classes)},
        "label2id": {c: i for i, c in enumerate(classes)},
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "intermediate_size": cfg.d_ff,
        "hidden_act": "gelu",  # exact (erf) GELU, as ours
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.dropout,
        "max_position_embeddings": cfg.context_len,
        "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.norm_eps,
        "position_embedding_type": "absolute",
        "pad_token_id": pad_id,
        "torch_dtype": dtype,  # transformers 4.x
        "dtype": dtype,  # transformers 5
    }


def _tokenizer(path: Path, vocab_size: int, max_len: int) -> tuple[str, dict[str, Any]]:
    """(tokenizer.json text without fixed padding, cutting at max_len; special tokens for
    tokenizer_config.json and the pad id)."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception on a missing or malformed file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise HFError(f"{path}: not a readable tokenizer.json ({msg})") from None
    if tok.get_vocab_size() > vocab_size:
        raise HFError(
            f"{path}: has {tok.get_vocab_size()} tokens but the model's vocab_size is "
            f"{vocab_size}; export with the tokenizer the model was trained with"
        )
    padding = tok.padding
    # what our classify pads with does not matter (the mask hides it); HF needs a pad token
    pad = padding["pad_token"] if padding else None
    if pad is None or tok.token_to_id(pad) is None:
        pad = "[PAD]" if tok.token_to_id("[PAD]") is not None else tok.id_to_token(0)
    tok.no_padding()
    tok.enable_truncation(max_length=max_len)
    special: dict[str, Any] = {"pad_token": pad, "pad_token_id": tok.token_to_id(pad)}
    for key, name in (("unk", "[UNK]"), ("cls", "[CLS]"), ("sep", "[SEP]"), ("mask", "[MASK]")):
        if tok.token_to_id(name) is not None:
            special[f"{key}_token"] = name
    return tok.to_str(), special
