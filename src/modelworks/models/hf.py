"""Hugging Face interop for our GPT: import a local Llama/Mistral folder, export a Llama folder.

`import_hf(folder)` reads config.json and safetensors (one file or an index of shards) directly:
no transformers import, no pickle, no remote code. `export_hf(model, out_dir)` writes a folder that
`transformers.AutoModelForCausalLM.from_pretrained(out_dir)` loads as `LlamaForCausalLM`, plus
`AutoTokenizer` files when given our tokenizer.json; `tokenizer(text)` on them starts with the start
token, as our engine starts every prompt (`with_start_token`). Text classifiers on our encoder
export through hf_encoder.py.

Our GPT is Llama's architecture (rotate-half RoPE, RMSNorm, SwiGLU, GQA, no biases), so weights
map 1:1, no permutation. Name map, ours <- Hugging Face ({i} is the layer):

    tok_emb.weight                  <- model.embed_tokens.weight
    blocks.{i}.attn_norm.weight     <- model.layers.{i}.input_layernorm.weight
    blocks.{i}.attn.wq/wk/wv/wo     <- model.layers.{i}.self_attn.q_proj/k_proj/v_proj/o_proj
    blocks.{i}.mlp_norm.weight      <- model.layers.{i}.post_attention_layernorm.weight
    blocks.{i}.mlp.w_gate/w_up/w_down <- model.layers.{i}.mlp.gate_proj/up_proj/down_proj
    norm.weight                     <- model.norm.weight
    lm_head.weight                  <- lm_head.weight (absent when the embeddings are tied)

Refused, because our model would not compute the same function: RoPE scaling (Llama 3.1's
"llama3", YaRN, ...), attention/MLP biases (hence Qwen2), a head_dim other than hidden/heads,
activations other than SiLU. Mistral's sliding window is exact as long as the context fits in it,
so the imported context is capped to the window.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from modelworks.artifacts import atomic_write_json, staged_folder
from modelworks.errors import HFError
from modelworks.models.gpt import GPT, GPTConfig

log = logging.getLogger("modelworks")

SUPPORTED = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral"}
# why each refused architecture cannot be made exact; anything else is "unsupported"
_REFUSED_WHY = {"Qwen2ForCausalLM": "has q/k/v projection biases, which our GPT does not have"}
_MISTRAL_WINDOW = 4096  # transformers' MistralConfig default when config.json omits it

# (ours, Hugging Face); "{i}" expands per layer. One table serves import and export.
NAME_MAP: tuple[tuple[str, str], ...] = (
    ("tok_emb.weight", "model.embed_tokens.weight"),
    ("blocks.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("blocks.{i}.attn.wq.weight", "model.layers.{i}.self_attn.q_proj.weight"),
    ("blocks.{i}.attn.wk.weight", "model.layers.{i}.self_attn.k_proj.weight"),
    ("blocks.{i}.attn.wv.weight", "model.layers.{i}.self_attn.v_proj.weight"),
    ("blocks.{i}.attn.wo.weight", "model.layers.{i}.self_attn.o_proj.weight"),
    ("blocks.{i}.mlp_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("blocks.{i}.mlp.w_gate.weight", "model.layers.{i}.mlp.gate_proj.weight"),
    ("blocks.{i}.mlp.w_up.weight", "model.layers.{i}.mlp.up_proj.weight"),
    ("blocks.{i}.mlp.w_down.weight", "model.layers.{i}.mlp.down_proj.weight"),
    ("norm.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
)


def is_hf_folder(path: str | Path) -> bool:
    """A Hugging Face model folder: config.json with `architectures`, and no run layout."""
    path = Path(path)
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "architectures" in cfg and not (path / "pretrain").is_dir()


def tensor_names(cfg: GPTConfig) -> dict[str, str]:
    """Our parameter name -> Hugging Face tensor name, for every tensor the folder holds."""
    out = {}
    for ours, theirs in NAME_MAP:
        if ours == "lm_head.weight" and cfg.tie_embeddings:
            continue  # the tied head is the embedding; HF omits it too
        layers = range(cfg.n_layer) if "{i}" in ours else [None]
        for i in layers:
            out[ours.format(i=i)] = theirs.format(i=i)
    return out


# ---------------------------------------------------------------------------------------- import


def import_hf(folder: str | Path, context_len: int | None = None) -> GPT:
    """Load a local Llama/Mistral Hugging Face folder into a float32 GPT.

    `context_len` caps max_position_embeddings, so a 128k-context model does not allocate a
    128k-row RoPE table on a small machine."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HFError(f"{folder}: no such folder; pass a local Hugging Face model folder")
    cfg = config_from_hf(_read_json(folder / "config.json"), folder / "config.json", context_len)
    files = _weight_files(folder)
    model = GPT(cfg)
    params = dict(model.named_parameters())  # a tied lm_head appears once, as tok_emb
    wanted = {theirs: ours for ours, theirs in tensor_names(cfg).items()}
    found: dict[str, Path] = {}
    tied_head = None
    with torch.no_grad():
        for path, names in files.items():
            try:
                with safe_open(str(path), framework="pt") as f:
                    for name in names if names is not None else f.keys():
                        if name.endswith("rotary_emb.inv_freq"):
                            continue  # old conversions saved RoPE's buffer; we recompute it
                        if name == "lm_head.weight" and cfg.tie_embeddings:
                            tied_head = (path, f.get_tensor(name))
                            continue
                        if name not in wanted:
                            raise HFError(
                                f"{path}: unexpected tensor {name!r} for a {cfg.n_layer}-layer "
                                f"Llama; this folder is not a plain Llama/Mistral checkpoint"
                            )
                        tensor = f.get_tensor(name)
                        target = params[wanted[name]]
                        if tuple(tensor.shape) != tuple(target.shape):
                            raise HFError(
                                f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                                f"config.json implies {tuple(target.shape)}; the folder is "
                                f"inconsistent"
                            )
                        target.copy_(tensor)
                        found[name] = path
            except (SafetensorError, OSError, RuntimeError, KeyError) as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise HFError(f"{path}: cannot read safetensors ({msg}); re-download it") from None
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise HFError(
            f"{folder}: {len(missing)} tensor(s) missing from the weights, e.g. {missing[:3]}; "
            f"the download is incomplete or config.json does not match the weights"
        )
    if tied_head is not None and not torch.equal(tied_head[1].float(), model.tok_emb.weight):
        raise HFError(
            f"{tied_head[0]}: lm_head.weight differs from the embedding although config.json "
            f"sets tie_word_embeddings=true; fix the config or the weights"
        )
    return model


def config_from_hf(hf: dict[str, Any], where: str | Path, context_len: int | None = None):
    """Map a Hugging Face config.json (as a dict) to GPTConfig, refusing anything inexact."""

    def refuse(why: str) -> HFError:
        return HFError(f"{where}: {why}")

    archs = hf.get("architectures") or []
    model_type = hf.get("model_type")
    supported = ", ".join(SUPPORTED)
    for arch in archs:
        if arch in _REFUSED_WHY:
            raise refuse(f"{arch} {_REFUSED_WHY[arch]}; supported: {supported}")
        if arch not in SUPPORTED:
            raise refuse(f"architecture {arch} is not supported; supported: {supported}")
    if model_type not in SUPPORTED.values() and not archs:
        raise refuse(f"model_type {model_type!r} is not supported; supported: {supported}")
    kind = SUPPORTED[archs[0]] if archs else model_type

    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise refuse(f"RoPE scaling {rope_type!r} is set; only unscaled RoPE is supported")
    if rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise refuse("partial_rotary_factor is set; only full-width RoPE is supported")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise refuse(f"{key} is true; our GPT has no biases")
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise refuse(f"hidden_act {act!r} is not supported; only SiLU (SwiGLU) is")
    try:
        d_model, n_head = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        n_kv_head = int(hf.get("num_key_value_heads") or n_head)
        head_dim = hf.get("head_dim") or d_model // n_head
        if head_dim * n_head != d_model:
            raise refuse(
                f"head_dim={head_dim} differs from hidden_size/num_attention_heads="
                f"{d_model}/{n_head}; our GPT derives the head size"
            )
        ctx = int(hf.get("max_position_embeddings", 2048))
        if context_len is not None:
            ctx = min(ctx, int(context_len))
        if ctx <= 0:
            raise refuse(f"context length {ctx} must be positive (max_position_embeddings)")
        window = hf.get("sliding_window", _MISTRAL_WINDOW) if kind == "mistral" else None
        if window is not None and ctx > window:
            log.info("%s: context capped to Mistral's sliding window of %d", where, window)
            ctx = int(window)
        return GPTConfig(
            vocab_size=int(hf["vocab_size"]),
            context_len=ctx,
            n_layer=int(hf["num_hidden_layers"]),
            n_head=n_head,
            n_kv_head=n_kv_head,
            d_model=d_model,
            ffn_hidden=int(hf["intermediate_size"]),
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            init_std=float(hf.get("initializer_range", 0.02)),
        )
    except KeyError as e:
        raise refuse(f"required field {e.args[0]!r} is missing") from None
    except (TypeError, ValueError) as e:
        raise refuse(f"not a usable Llama config ({e})") from None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise HFError(f"{path} does not exist; a Hugging Face model folder needs it")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HFError(f"{path}: not readable JSON ({e}); re-download it") from None
    if not isinstance(data, dict):
        raise HFError(f"{path}: expected a JSON object at the top level")
    return data


def _weight_files(folder: Path) -> dict[Path, list[str] | None]:
    """Each safetensors file -> the tensor names to read from it (None: all of them)."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return {single: None}
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise HFError(f"{index}: has no 'weight_map'; re-download it")
        files: dict[Path, list[str]] = {}
        for name, shard in weight_map.items():
            files.setdefault(folder / shard, []).append(name)
        for shard in files:
            if not shard.is_file():
                raise HFError(f"{index}: shard {shard.name} is missing; re-download it")
        return files
    raise HFError(
        f"{folder}: no model.safetensors or model.safetensors.index.json; pickled "
        f"pytorch_model.bin is never read: convert it to safetensors first"
    )


# ---------------------------------------------------------------------------------------- export


def export_hf(
    model: GPT,
    out_dir: str | Path,
    tokenizer_json: str | Path | None = None,
    eos_token: str = "<|endoftext|>",
    chat_template: str | None = None,
    bos_token: str | None = None,
    add_bos: bool = True,
) -> Path:
    """Write `model` as a Hugging Face Llama folder; with `tokenizer_json`, also tokenizer files
    (and `chat_template` in tokenizer_config.json, for `apply_chat_template`). `bos_token`: the
    start token when it is not the end token (a chat model's, e.g. <|im_start|>); `add_bos`:
    whether `tokenizer(text)` puts it first, as our engine does unless the model says not to.

    The folder is built next to `out_dir` and renamed into place, replacing an earlier export."""
    if not isinstance(model, GPT):
        raise HFError(f"export_hf takes a modelworks GPT, not {type(model).__name__}")
    cfg, out_dir = model.cfg, Path(out_dir)
    bos_token = bos_token or eos_token
    eos_id = bos_id = None
    tok_bytes = None
    if tokenizer_json is not None:
        tok_bytes, eos_id = _read_tokenizer(Path(tokenizer_json), eos_token, cfg.vocab_size)
        bos_id = (
            eos_id
            if bos_token == eos_token
            else _read_tokenizer(Path(tokenizer_json), bos_token, cfg.vocab_size)[1]
        )

    state = model.state_dict()
    names = tensor_names(cfg)
    extra = sorted(set(state) - set(names) - {"lm_head.weight"})
    if extra:
        raise HFError(
            f"model has parameters with no Llama equivalent, e.g. {extra[:3]}; merge or remove "
            f"adapters (LoRA) before export"
        )
    tensors = {theirs: state[ours].detach().cpu().contiguous() for ours, theirs in names.items()}
    dtype = str(model.tok_emb.weight.dtype).removeprefix("torch.")

    if out_dir.is_file() or (out_dir.is_dir() and not _is_export(out_dir)):
        raise HFError(
            f"{out_dir} exists and is not an earlier export; choose a new or empty folder"
        )
    with staged_folder(out_dir) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(tmp / "config.json", _hf_config(cfg, dtype, eos_id, bos_id))
        generation = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": eos_id}
        atomic_write_json(tmp / "generation_config.json", generation)
        if tok_bytes is not None:
            if add_bos:
                tok_bytes = with_start_token(tok_bytes, bos_token)
            (tmp / "tokenizer.json").write_bytes(tok_bytes)
            atomic_write_json(
                tmp / "tokenizer_config.json",
                {
                    "tokenizer_class": "PreTrainedTokenizerFast",
                    **{f"{k}_token": eos_token for k in ("eos", "unk", "pad")},
                    "bos_token": bos_token,
                    # our engine starts every prompt with the start token (end-of-text, as
                    # documents were separated in training); so does tokenizer(text) here
                    "add_bos_token": add_bos,
                    "add_eos_token": False,
                    "model_max_length": cfg.context_len,
                    # our byte-level BPE decodes exactly; HF's clean-up would alter spaces
                    "clean_up_tokenization_spaces": False,
                    **({"chat_template": chat_template} if chat_template else {}),
                },
            )
    return out_dir


def _hf_config(cfg: GPTConfig, dtype: str, eos_id: int | None, bos_id: int | None) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.context_len,
        "rms_norm_eps": cfg.norm_eps,
        # transformers 5 reads rope_parameters, 4.x reads rope_theta: write both
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "use_cache": True,
        "torch_dtype": dtype,  # transformers 4.x
        "dtype": dtype,  # transformers 5
    }


def with_start_token(tokenizer_json: bytes, bos_token: str) -> bytes:
    """tokenizer.json whose encode() (HF: `tokenizer(text)`, add_special_tokens=True) puts
    `bos_token` first, as our engine does for every prompt, with the template transformers itself
    builds for add_bos_token (so both read the same); add_special_tokens=False stays plain."""
    from tokenizers import Tokenizer, processors

    tok = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
    bos_id = tok.token_to_id(bos_token)
    special, plain = tok.encode("a").ids, tok.encode("a", add_special_tokens=False).ids
    if special[:1] == [bos_id] and plain[:1] != [bos_id]:
        return tokenizer_json  # already adds it (a Llama-style tokenizer)
    template = processors.TemplateProcessing(
        single=f"{bos_token}:0 $A:0",
        pair=f"{bos_token}:0 $A:0 {bos_token}:1 $B:1",
        special_tokens=[(bos_token, bos_id)],
    )
    old = tok.post_processor
    tok.post_processor = template if old is None else processors.Sequence([old, template])
    return tok.to_str().encode("utf-8")


def _read_tokenizer(path: Path, eos_token: str, vocab_size: int) -> tuple[bytes, int]:
    from tokenizers import Tokenizer

    try:
        data = path.read_bytes()
        tok = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # tokenizers raises plain Exception on a malformed file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise HFError(f"{path}: not a readable tokenizer.json ({msg})") from None
    eos_id = tok.token_to_id(eos_token)
    if eos_id is None:
        raise HFError(f"{path}: has no token {eos_token!r}; pass the tokenizer's eos_token")
    if tok.get_vocab_size() > vocab_size:
        raise HFError(
            f"{path}: has {tok.get_vocab_size()} tokens but the model's vocab_size is "
            f"{vocab_size}; export with the tokenizer the model was trained with"
        )
    return data, eos_id


_EXPORT_FILES = {
    "config.json",
    "model.safetensors",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


def _is_export(folder: Path) -> bool:
    """An empty folder or an earlier export, which replacing cannot lose anything else."""
    return all(p.name in _EXPORT_FILES for p in folder.iterdir())


__all__ = ["HFError", "NAME_MAP", "config_from_hf", "export_hf", "import_hf", "tensor_names"]
