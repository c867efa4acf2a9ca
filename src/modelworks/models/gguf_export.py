"""Our GPT as a Llama GGUF file that llama.cpp, ollama, transformers and models/gguf.py read.

    write_gguf(model, "out/model.gguf", tokenizer_json, chat_template, qtype="q8_0")

Weights: F32, F16 or Q8_0 (`gguf.quants.quantize`); norm gains stay F32 whatever the choice, as
llama.cpp's converter keeps them. attn_q / attn_k rows are permuted into llama.cpp's interleaved
RoPE layout (models/gguf.py undoes it on reading). The tokenizer (a byte-level BPE tokenizer.json)
goes in as `tokenizer.ggml.*` metadata with the start/end token ids and the chat template. The
file is written next to its destination and renamed into place.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from modelworks.errors import GGUFError
from modelworks.models.gguf import permute_rope, tensor_names
from modelworks.models.gguf_tokenizer import tokenizer_metadata
from modelworks.models.gpt import GPT

QTYPES = ("f32", "f16", "q8_0")


def write_gguf(
    model: GPT,
    out: str | Path,
    tokenizer_json: str | Path,
    chat_template: str | None = None,
    qtype: str = "f16",
    bos_id: int | None = None,
    eos_ids: set[int] | None = None,
    add_bos: bool = True,
    name: str = "modelworks",
) -> Path:
    import logging

    import gguf

    logging.getLogger("gguf.gguf_writer").setLevel(logging.WARNING)  # its per-file INFO lines
    if not isinstance(model, GPT):
        raise GGUFError(f"GGUF export takes a modelworks GPT, not {type(model).__name__}")
    if qtype not in QTYPES:
        raise GGUFError(f"GGUF type {qtype!r} is not one of {', '.join(QTYPES)}")
    cfg, out = model.cfg, Path(out)
    tok = tokenizer_metadata(tokenizer_json)
    if len(tok["tokens"]) > cfg.vocab_size:
        raise GGUFError(
            f"{tokenizer_json}: {len(tok['tokens'])} tokens for a model of vocab_size "
            f"{cfg.vocab_size}; export with the tokenizer the model was trained with"
        )
    tokens, types = list(tok["tokens"]), list(tok["types"])
    for i in range(len(tokens), cfg.vocab_size):  # rows the tokenizer never produces
        tokens.append(f"[PAD{i}]")
        types.append(5)  # UNUSED
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    extra = sorted(set(state) - set(tensor_names(cfg).values()) - {"lm_head.weight"})
    if extra:
        raise GGUFError(
            f"model has parameters with no Llama equivalent, e.g. {extra[:3]}; merge or remove "
            f"adapters (LoRA) before export"
        )
    file_type = {"f32": 0, "f16": 1, "q8_0": 7}[qtype]  # llama.cpp's LLAMA_FTYPE values
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        w = gguf.GGUFWriter(str(tmp), "llama")
        w.add_name(name)
        w.add_context_length(cfg.context_len)
        w.add_embedding_length(cfg.d_model)
        w.add_block_count(cfg.n_layer)
        w.add_feed_forward_length(cfg.ffn_hidden)
        w.add_head_count(cfg.n_head)
        w.add_head_count_kv(cfg.n_kv_head)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_vocab_size(cfg.vocab_size)
        w.add_file_type(file_type)
        w.add_tokenizer_model(tok["model"])
        w.add_tokenizer_pre(tok["pre"])
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(tok["merges"])
        if bos_id is not None:
            w.add_bos_token_id(int(bos_id))
        for eos in sorted(eos_ids or ())[:1]:  # GGUF has one eos id; the rest are eot/eom
            w.add_eos_token_id(int(eos))
            w.add_pad_token_id(int(eos))
        w.add_add_bos_token(bool(add_bos))
        if chat_template:
            w.add_chat_template(chat_template)
        for theirs, ours in tensor_names(cfg).items():
            data = np.ascontiguousarray(state[ours])
            if ".attn_q." in theirs:
                data = permute_rope(data, cfg.n_head)
            elif ".attn_k." in theirs:
                data = permute_rope(data, cfg.n_kv_head)
            _add(w, theirs, np.ascontiguousarray(data), qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _add(writer, name: str, data: np.ndarray, qtype: str) -> None:
    import gguf

    if data.ndim == 1 or qtype == "f32":
        writer.add_tensor(name, data.astype(np.float32))
    elif qtype == "f16":
        writer.add_tensor(name, data.astype(np.float16))
    else:
        q = gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
