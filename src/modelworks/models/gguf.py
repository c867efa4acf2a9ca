"""GGUF (llama.cpp's file format) into our GPT: config, weights and chat tokens, read exactly.

`load_gguf(path)` reads a Llama-family GGUF with the `gguf` package (its reader and
`gguf.quants.dequantize`) into a float32 GPT: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and
the K-quants (Q2_K..Q6_K) are dequantized once at load. The tokenizer is built by
models/gguf_tokenizer.py; `chat_tokens(reader)` gives the start/end token ids and the chat template.

Notable:
- llama.cpp's converter permutes the rows of attn_q / attn_k per head (its RoPE rotates
  interleaved pairs, ours and Hugging Face's rotate halves); we undo it here, as transformers'
  GGUF loader does, and models/gguf_export.py redoes it.
- GGUF lists shapes fastest dimension first ([in, out]); numpy's shape is the reverse.
- Refused, because our GPT would not compute the same function: any architecture but `llama`
  (Mistral and SmolLM files say `llama` too), RoPE scaling, a head size other than
  hidden/heads, tensors we do not know (biases, rope_freqs).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelworks.errors import GGUFError
from modelworks.models.gpt import GPT, GPTConfig, rope_tables

log = logging.getLogger("modelworks")

ARCHITECTURES = ("llama",)
# why some common architectures cannot be made exact (others are just "not supported")
_REFUSED_WHY = {
    "qwen2": "has q/k/v projection biases, which our GPT does not have",
    "gemma": "scales embeddings and uses GeLU, which our GPT does not do",
    "phi3": "fuses q/k/v and has partial RoPE",
}

# GGUF tensor name -> ours; "{i}" expands per layer
TENSOR_MAP: tuple[tuple[str, str], ...] = (
    ("token_embd.weight", "tok_emb.weight"),
    ("blk.{i}.attn_norm.weight", "blocks.{i}.attn_norm.weight"),
    ("blk.{i}.attn_q.weight", "blocks.{i}.attn.wq.weight"),
    ("blk.{i}.attn_k.weight", "blocks.{i}.attn.wk.weight"),
    ("blk.{i}.attn_v.weight", "blocks.{i}.attn.wv.weight"),
    ("blk.{i}.attn_output.weight", "blocks.{i}.attn.wo.weight"),
    ("blk.{i}.ffn_norm.weight", "blocks.{i}.mlp_norm.weight"),
    ("blk.{i}.ffn_gate.weight", "blocks.{i}.mlp.w_gate.weight"),
    ("blk.{i}.ffn_up.weight", "blocks.{i}.mlp.w_up.weight"),
    ("blk.{i}.ffn_down.weight", "blocks.{i}.mlp.w_down.weight"),
    ("output_norm.weight", "norm.weight"),
    ("output.weight", "lm_head.weight"),
)


def tensor_names(cfg: GPTConfig) -> dict[str, str]:
    """GGUF tensor name -> our parameter name, for every tensor a file of `cfg` holds."""
    out = {}
    for theirs, ours in TENSOR_MAP:
        if theirs == "output.weight" and cfg.tie_embeddings:
            continue
        for i in range(cfg.n_layer) if "{i}" in theirs else [None]:
            out[theirs.format(i=i)] = ours.format(i=i)
    return out


def open_gguf(path: str | Path):
    """A `gguf.GGUFReader` over `path`; one GGUFError line for a missing, truncated or
    corrupt file, or one with a quantization type the gguf package does not know."""
    try:
        import gguf
    except ImportError:
        raise GGUFError("reading GGUF files needs the gguf package: pip install gguf") from None
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise GGUFError(f"{path}: not a GGUF file (header {magic!r}, expected b'GGUF')")
    try:
        return gguf.GGUFReader(str(path))
    except ValueError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "GGMLQuantizationType" in msg:
            raise GGUFError(
                f"{path}: unknown quantization type ({msg}); the file is newer than the gguf "
                f"package (pip install -U gguf) or corrupt"
            ) from None
        raise GGUFError(f"{path}: truncated or corrupt GGUF ({msg}); download it again") from None
    except Exception as e:  # the reader raises IndexError/struct.error/... on a cut file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GGUFError(f"{path}: truncated or corrupt GGUF ({msg}); download it again") from None


def field(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    value = f.contents()
    return value


def config_from_gguf(reader, where: str | Path, context_len: int | None = None) -> GPTConfig:
    arch = field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        why = _REFUSED_WHY.get(str(arch), "is not supported")
        raise GGUFError(
            f"{where}: architecture {arch!r} {why}; supported: {', '.join(ARCHITECTURES)}"
        )

    def need(key: str):
        value = field(reader, f"{arch}.{key}")
        if value is None:
            raise GGUFError(f"{where}: metadata {arch}.{key} is missing; the file is incomplete")
        return value

    scaling = field(reader, f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", None) or "rope_freqs.weight" in {t.name for t in reader.tensors}:
        raise GGUFError(
            f"{where}: RoPE scaling ({scaling}) is set; only unscaled RoPE is supported"
        )
    d_model, n_head = int(need("embedding_length")), int(need("attention.head_count"))
    n_kv = int(field(reader, f"{arch}.attention.head_count_kv", n_head))
    head_dim = int(field(reader, f"{arch}.rope.dimension_count", d_model // n_head))
    key_len = int(field(reader, f"{arch}.attention.key_length", head_dim))
    if head_dim * n_head != d_model or key_len != head_dim:
        raise GGUFError(
            f"{where}: head size {key_len} (RoPE over {head_dim}) differs from "
            f"embedding_length/head_count={d_model}/{n_head}; our GPT derives the head size"
        )
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = field(reader, f"{arch}.vocab_size") or (len(tokens.data) if tokens else None)
    if vocab is None:
        emb = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
        vocab = int(emb.shape[1]) if emb is not None else 0
    ctx = int(need("context_length"))
    if context_len is not None:
        ctx = min(ctx, int(context_len))
    names = {t.name for t in reader.tensors}
    try:
        return GPTConfig(
            vocab_size=int(vocab),
            context_len=ctx,
            n_layer=int(need("block_count")),
            n_head=n_head,
            n_kv_head=n_kv,
            d_model=d_model,
            ffn_hidden=int(need("feed_forward_length")),
            # stored as float32: 1e-5 reads 9.9999997e-06; 7 digits give back the value written
            rope_theta=_f32(field(reader, f"{arch}.rope.freq_base", 10000.0)),
            norm_eps=_f32(need("attention.layer_norm_rms_epsilon")),
            tie_embeddings="output.weight" not in names,
        )
    except ValueError as e:
        raise GGUFError(f"{where}: not a usable Llama config ({e})") from None


def _f32(value) -> float:
    return float(f"{float(value):.7g}")


def unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's interleaved-pair rows of attn_q / attn_k back to rotate-half rows."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rotate-half rows to llama.cpp's interleaved pairs (the inverse of `unpermute_rope`)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def dequantize(tensor, where: str | Path) -> np.ndarray:
    """One reader tensor as float32 numpy, shaped as our (out, in)."""
    import gguf

    qtype = tensor.tensor_type
    shape = tuple(int(d) for d in reversed(tensor.shape))
    if qtype == gguf.GGMLQuantizationType.F32:
        return np.array(tensor.data, dtype=np.float32).reshape(
            shape
        )  # a copy: the map is read-only
    if qtype == gguf.GGMLQuantizationType.F16:
        return np.asarray(tensor.data).astype(np.float32).reshape(shape)
    try:
        out = gguf.quants.dequantize(tensor.data, qtype)
    except NotImplementedError:
        raise GGUFError(
            f"{where}: tensor {tensor.name} has quantization type {qtype.name}, which the gguf "
            f"package cannot dequantize; re-quantize the model (Q8_0, Q4_K_M, ...)"
        ) from None
    return np.asarray(out, dtype=np.float32).reshape(shape)


def read_state(reader, cfg: GPTConfig, where: str | Path) -> dict[str, torch.Tensor]:
    """Our state dict (float32) from the reader's tensors, checking names and shapes."""
    wanted = tensor_names(cfg)
    state: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        if t.name not in wanted:
            raise GGUFError(
                f"{where}: unexpected tensor {t.name!r} for a {cfg.n_layer}-layer Llama; "
                f"this file is not a plain Llama model"
            )
        w = dequantize(t, where)
        if ".attn_q." in t.name:
            w = unpermute_rope(w, cfg.n_head)
        elif ".attn_k." in t.name:
            w = unpermute_rope(w, cfg.n_kv_head)
        state[wanted[t.name]] = torch.from_numpy(np.ascontiguousarray(w))
    missing = sorted(set(wanted) - {t.name for t in reader.tensors})
    if missing:
        raise GGUFError(f"{where}: {len(missing)} tensor(s) missing, e.g. {missing[:3]}")
    return state


def load_gguf(path: str | Path, context_len: int | None = None, reader=None) -> GPT:
    """A float32 GPT from a Llama-family GGUF; `context_len` caps the context (RoPE table and
    the longest sequence), so a server does not size its KV cache for 128k tokens. `reader`:
    the file already opened with `open_gguf` (parsing its metadata takes seconds)."""
    reader = reader if reader is not None else open_gguf(path)
    cfg = config_from_gguf(reader, path, context_len)
    state = read_state(reader, cfg, path)
    with torch.device("meta"):  # no random init of weights that are overwritten next
        model = GPT(cfg)
    model.modelworks_config = cfg  # as models.registry.build_model sets it: checkpoints need it
    expected = dict(model.named_parameters())
    for name, value in state.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise GGUFError(
                f"{path}: tensor for {name} has shape {tuple(value.shape)}, the metadata implies "
                f"{tuple(expected[name].shape)}; the file is inconsistent"
            )
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    cos, sin = rope_tables(cfg, cfg.context_len)
    model.register_buffer("rope_cos", cos, persistent=False)
    model.register_buffer("rope_sin", sin, persistent=False)
    return model


def chat_tokens(reader) -> tuple[int | None, set[int], str | None, bool]:
    """(start token id, end token ids, chat template, whether prompts start with the start
    token) as the file's tokenizer metadata says."""
    bos = field(reader, "tokenizer.ggml.bos_token_id")
    eos = {
        int(v)
        for k in ("eos_token_id", "eot_token_id", "eom_token_id")
        if (v := field(reader, f"tokenizer.ggml.{k}")) is not None
    }
    template = field(reader, "tokenizer.chat_template")
    add_bos = bool(field(reader, "tokenizer.ggml.add_bos_token", True))
    return (int(bos) if bos is not None else None), eos, template, add_bos


def is_gguf(path: str | Path) -> bool:
    path = Path(path)
    return path.suffix.lower() == ".gguf" and path.is_file()
