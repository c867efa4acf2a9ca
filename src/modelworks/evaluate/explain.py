"""Interpretability: attention maps and token attributions for one input.

    from modelworks.evaluate.explain import explain
    result = explain(model, tokenizer, "def add(a, b):")   # JSON-ready dict

- Attention maps, per layer and head and averaged over both, for our GPT (causal, RoPE, GQA) and
  our BERT-style encoder. The fused attention kernel never materialises the weights, so they are
  recomputed from each attention module's input: softmax(q k^T / sqrt(d)) with the same RoPE,
  key/value-head sharing and masks as the forward pass.
- Token attributions: for a classifier (an encoder with a head), integrated gradients (captum's
  LayerIntegratedGradients over the token embeddings, from an all-id-0 baseline) of the
  predicted class; for a language model, gradient x input of the greedy next token's logit (the
  logit rather than its log-probability, which saturates once the model is sure). Each token's
  score is the sum over the embedding dimension; positive scores support the prediction.
`plot_attention` and `plot_attributions` draw the same data as PNGs for the report.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modelworks.evaluate.report import EvaluateError, save_png


def _is_classifier(model: nn.Module) -> bool:
    # an encoder with a head, or our decoder with a class head (gpt_classifier)
    has_head = getattr(model, "head", None) is not None
    return has_head and (hasattr(model, "hidden_states") or _is_gpt(model))


def _is_gpt(model: nn.Module) -> bool:
    # our decoder's blocks (RoPE attention with wq/wk/wv), under an LM head or a class head
    blocks = getattr(model, "blocks", None)
    return bool(blocks) and hasattr(getattr(blocks[0], "attn", None), "wq")


def _is_vit(model: nn.Module) -> bool:
    return hasattr(model, "blocks") and hasattr(model, "patch_embed")


@torch.no_grad()
def attention_maps(
    model: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> np.ndarray:
    """(layers, heads, T, T) attention weights for one input (1, T) ids, or (1, C, H, W) image
    for a ViT (T = class token + patches). Each attention layer computes its own weights from the
    inputs its forward received (`attention_weights`: models/gpt.py, vit.py, encoder.py), so an
    architecture whose attention modules have that method is explainable here; an encoder's
    `attention_mask` (1, T) masks keys as its forward does."""
    if _is_gpt(model) or _is_vit(model):
        modules = [b.attn for b in model.blocks]
    elif hasattr(model, "layers") and hasattr(model.layers[0], "attn"):
        modules = [layer.attn for layer in model.layers]
    else:
        modules = []
    if not modules or not all(hasattr(m, "attention_weights") for m in modules):
        raise EvaluateError(f"attention maps: {type(model).__name__} is not supported")
    inputs: list[tuple] = []
    hooks = [m.register_forward_pre_hook(lambda _m, a: inputs.append(a)) for m in modules]
    try:
        model(ids) if attention_mask is None else model(ids, attention_mask)
    finally:
        for h in hooks:
            h.remove()
    maps = [m.attention_weights(*args)[0].float() for m, args in zip(modules, inputs, strict=True)]
    return torch.stack(maps).cpu().numpy()


def integrated_gradients(
    model: nn.Module,
    ids: torch.Tensor,
    target: int,
    steps: int = 32,
    attention_mask: torch.Tensor | None = None,
) -> np.ndarray:
    """Per-token integrated-gradients attribution (T,) of class `target` for a classifier, whose
    forward gets `attention_mask` (1, T) as classification gives it."""
    from captum.attr import LayerIntegratedGradients

    model.eval()
    mask = torch.ones_like(ids) if attention_mask is None else attention_mask
    lig = LayerIntegratedGradients(lambda x, m: model(x, m), model.tok_emb)
    attr = lig.attribute(
        ids,
        baselines=torch.zeros_like(ids),
        target=target,
        n_steps=steps,
        additional_forward_args=(mask,),
    )
    return attr.sum(-1)[0].detach().float().cpu().numpy()


def gradient_x_input(model: nn.Module, ids: torch.Tensor, target: int) -> np.ndarray:
    """Per-token gradient x input (T,) of the target's logit at the last position of an LM."""
    emb = model.tok_emb
    captured: dict = {}

    def keep(_m, _a, out):
        out.retain_grad()
        captured["e"] = out
        return out

    hook = emb.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(ids)
            logits[0, -1, target].float().backward()
    finally:
        hook.remove()
        model.zero_grad(set_to_none=True)
    e = captured["e"]
    return (e.grad * e).sum(-1)[0].detach().float().cpu().numpy()


def _token_texts(tokenizer, ids: list[int]) -> list[str]:
    return [tokenizer.decode([i], skip_special_tokens=False) for i in ids]


def explain(
    model: nn.Module,
    tokenizer,
    text: str,
    start_id: int | None = None,
    max_tokens: int = 64,
    ig_steps: int = 32,
) -> dict:
    """Attention maps and token attributions for `text`, as a JSON-ready dict:

    {"kind": "language_model" | "classifier", "tokens": [str], "token_ids": [int],
     "n_layer", "n_head", "attention": [layer][head][T][T], "attention_mean": [T][T],
     "attributions": [float] (one per token), "method": "gradient_x_input" |
     "integrated_gradients", "target": {"id": int, "text" | "label": ...},
     "top_tokens": [{"token", "position", "score"}] (most supporting first, 5 at most)}
    A classifier sees exactly what classification gives it (tasks/text_encoding's
    `classify_texts`: the tokenizer's own special tokens, no padding, the first `max_tokens`
    tokens, the same mask and forward), so "probability" is what /v1/classify answers. A
    language model gets its start token prepended (`start_id`, its end-of-text token), as the
    server does; the text is cut to its last `max_tokens` tokens.
    """
    if not text:
        raise EvaluateError("explain: the text is empty")
    device = next(model.parameters()).device
    model.eval()
    mask = None
    if _is_classifier(model):
        from modelworks.tasks.text_encoding import classify_texts

        max_len = min(max_tokens, model.cfg.context_len)
        probs, x, mask, _ = classify_texts(model, tokenizer, [text], max_len, device)
        probs = probs[0]
        ids = x[0].tolist()
        x, mask = x.to(device), mask.to(device)
        target = int(probs.argmax())
        attr = integrated_gradients(model, x, target, ig_steps, mask)
        kind, method = "classifier", "integrated_gradients"
        tgt = {"id": target, "probability": float(probs[target])}
    elif _is_gpt(model):
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        ids = ids[-min(max_tokens, model.cfg.context_len - 1) :]
        if start_id is not None:
            ids = [start_id, *ids]
        x = torch.tensor([ids], device=device)
        with torch.no_grad():
            probs = model(x)[0, -1].float().softmax(-1)
        target = int(probs.argmax())
        attr = gradient_x_input(model, x, target)
        kind, method = "language_model", "gradient_x_input"
        tgt = {
            "id": target,
            "text": tokenizer.decode([target], skip_special_tokens=False),
            "probability": float(probs[target]),
        }
    else:
        raise EvaluateError(f"explain: {type(model).__name__} is not a supported model")
    maps = attention_maps(model, x, mask)
    tokens = _token_texts(tokenizer, ids)
    order = np.argsort(-attr, kind="stable")[:5]
    return {
        "kind": kind,
        "tokens": tokens,
        "token_ids": [int(i) for i in ids],
        "n_layer": int(maps.shape[0]),
        "n_head": int(maps.shape[1]),
        "attention": np.round(maps, 5).tolist(),
        "attention_mean": np.round(maps.mean((0, 1)), 5).tolist(),
        "attributions": [float(a) for a in attr],
        "method": method,
        "target": tgt,
        "top_tokens": [
            {"token": tokens[i], "position": int(i), "score": float(attr[i])} for i in order
        ],
    }


def _labels(tokens: list[str]) -> list[str]:
    return [repr(t)[1:-1][:10] for t in tokens]


def plot_attention(result: dict, path: Path, max_panels: int = 16) -> None:
    """The layer x head grid of attention maps (up to `max_panels`) and their mean."""
    import matplotlib.pyplot as plt

    maps = np.array(result["attention"])
    L, H, T, _ = maps.shape
    panels = [(f"mean of {L} layers x {H} heads", maps.mean((0, 1)))]
    panels += [(f"layer {li} head {h}", maps[li, h]) for li in range(L) for h in range(H)]
    panels = panels[: max_panels + 1]
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), dpi=100, squeeze=False)
    labels = _labels(result["tokens"])
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (title, m) in zip(axes.flat, panels, strict=False):
        ax.imshow(m, cmap="viridis", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        if T <= 24:
            ax.set_xticks(range(T), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(T), labels, fontsize=6)
        ax.set_xlabel("key token (attended to)", fontsize=7)
        ax.set_ylabel("query token", fontsize=7)
    fig.suptitle("Attention weights (softmax probability, 0 to 1)")
    fig.tight_layout()
    save_png(fig, path)


def plot_attributions(result: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    attr = np.array(result["attributions"])
    labels = _labels(result["tokens"])
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(attr) + 1), 3.4), dpi=100)
    ax.bar(range(len(attr)), attr, color=["tab:red" if a < 0 else "tab:blue" for a in attr])
    ax.set_xticks(range(len(attr)), labels, rotation=90, fontsize=7)
    ax.set_xlabel("input token")
    ax.set_ylabel("attribution (sum over embedding)")
    what = result["target"].get("text", result["target"]["id"])
    ax.set_title(f"Token attributions ({result['method'].replace('_', ' ')}) for {what!r}")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save_png(fig, path)


def plot_token_heat(results: list[dict], titles: list[str], path: Path) -> None:
    """One row per classifier result: its tokens coloured by attribution (blue for, red against
    the predicted class; each row scaled to its own largest magnitude), titled by `titles`."""
    import matplotlib.pyplot as plt
    from matplotlib import colormaps

    width = max((len(r["tokens"]) for r in results), default=1)
    fig, axes = plt.subplots(
        len(results), 1, figsize=(min(16, 1 + 0.6 * width), 0.9 * len(results) + 0.6), dpi=100
    )
    axes = np.atleast_1d(axes)
    cmap = colormaps["RdBu"]
    for ax, r, title in zip(axes, results, titles, strict=True):
        attr = np.array(r["attributions"], dtype=float)
        scale = np.abs(attr).max() or 1.0
        ax.imshow((attr / scale)[None], cmap=cmap, vmin=-1, vmax=1, aspect="auto")
        for i, t in enumerate(_labels(r["tokens"])):
            ax.text(i, 0, t, ha="center", va="center", fontsize=7)
        ax.set_yticks([])
        ax.set_xticks([])
        ax.set_title(title, fontsize=8, loc="left")
    fig.suptitle("Integrated-gradients attribution per token (blue: for the prediction)")
    fig.tight_layout()
    save_png(fig, path)


def top_tokens_md(result: dict) -> str:
    return ", ".join(f"`{t['token']!r}` ({t['score']:+.3f})" for t in result["top_tokens"])


def report_section(
    model: nn.Module, tokenizer, text: str, out: Path, start_id: int | None = None
) -> tuple[tuple[str, str], list[tuple[str, str]]]:
    """The report's interpretability section for one input: (heading, markdown), [(png, caption)]
    (attention.png, attributions.png written into `out`; explain.json with the data)."""
    from modelworks.artifacts import atomic_write_json

    result = explain(model, tokenizer, text, start_id)
    atomic_write_json(out / "explain.json", result)
    plot_attention(result, out / "attention.png")
    plot_attributions(result, out / "attributions.png")
    target = result["target"]
    pred = f"next token {target['text']!r}" if "text" in target else f"class {target['id']}"
    body = (
        f"Input `{text}` ({len(result['tokens'])} tokens); prediction: {pred} "
        f"(p = {target['probability']:.3f}).\n\n"
        f"Top attributed tokens ({result['method'].replace('_', ' ')}): {top_tokens_md(result)}"
    )
    images = [
        ("attention.png", "Attention maps"),
        ("attributions.png", "Token attributions"),
    ]
    return ("Interpretability", body), images


def classifier_samples_section(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    labels: list[int],
    classes: list[str],
    n: int = 5,
    ig_steps: int = 32,
    max_tokens: int = 64,
) -> tuple[str, list[dict]]:
    """Sample predictions of a text classifier with their top attributed tokens (integrated
    gradients), as a markdown table for the report and the JSON-ready results. Takes the first
    `n` texts, each cut to `max_tokens` tokens; a task's evaluate() adds it as a
    ("Sample predictions", table) section."""
    rows = ["| text | true | predicted (p) | top tokens |", "|---|---|---|---|"]
    results = []
    for text, label in list(zip(texts, labels, strict=True))[:n]:
        r = explain(model, tokenizer, text, max_tokens=max_tokens, ig_steps=ig_steps)
        results.append(r)
        short = text if len(text) <= 80 else text[:77] + "..."
        short = short.replace("|", "/").replace("\n", " ")
        t = r["target"]
        top = ", ".join(f"`{x['token'].strip() or repr(x['token'])}`" for x in r["top_tokens"][:3])
        rows.append(
            f"| {short} | {classes[label]} | {classes[t['id']]} ({t['probability']:.2f}) | {top} |"
        )
    return "\n".join(rows), results


def plot_vit_attention(
    model: nn.Module, images: torch.Tensor, raw: torch.Tensor, titles: list[str], path: Path
) -> None:
    """For a few images: the image, and where the class token looks in the last layer (mean over
    heads), upsampled over the image. `images` are the normalised inputs (N, C, H, W), `raw` the
    same images for display."""
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.6), dpi=100, squeeze=False)
    for i in range(n):
        maps = attention_maps(model, images[i : i + 1])
        cls = maps[-1].mean(0)[0, 1:]  # last layer, mean over heads, class token -> patches
        side = int(round(math.sqrt(len(cls))))
        heat = cls.reshape(side, side)
        img = raw[i].float().mean(0).cpu().numpy()
        axes[0, i].imshow(img, cmap="gray")
        axes[0, i].set_title(titles[i], fontsize=8)
        axes[1, i].imshow(img, cmap="gray")
        axes[1, i].imshow(
            np.kron(heat, np.ones((img.shape[0] // side, img.shape[1] // side))),
            cmap="inferno",
            alpha=0.6,
        )
        for ax in axes[:, i]:
            ax.axis("off")
    axes[1, 0].set_title("class-token attention", fontsize=8)
    fig.suptitle("ViT: last-layer attention of the class token to the patches (mean over heads)")
    fig.tight_layout()
    save_png(fig, path)
