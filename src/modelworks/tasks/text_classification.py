"""Text classification (sentiment, topics...): cross-entropy on an encoder's pooled output.

Data: a `table` collect source (CSV/TSV/JSONL/Parquet with text and label columns). Preprocess
drops empty texts (counted), shuffles, splits train/val/test (`preprocess.val_fraction`,
`preprocess.test_fraction`) and refuses a label that appears in val/test but never in train (the
model could never predict it). It writes `{train,val,test}.parquet` (text, label id),
`labels.json` and, when a model is trained from scratch, a BPE `tokenizer.json`.

Training: from scratch (`pretrain`, `model.name: encoder`) or, usually, by fine-tuning an encoder
(`finetune.from: minilm` or a BERT folder), with a fresh head on the mean-pooled or [CLS] vector.
Texts longer than the training `seq_len` are truncated, and the count is reported.
Metrics (scikit-learn): accuracy and macro-F1 with 95% bootstrap CIs, per-class precision/recall,
confusion matrix, next to a majority-class baseline, on the held-out test split (val when there is
none); a few sample predictions with their integrated-gradients top tokens.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer
from torch import nn

from modelworks.artifacts import atomic_write_json, final_model_dir, tokenizer_path
from modelworks.config import Config, ConfigError
from modelworks.evaluate.classification import (  # noqa: F401  (public here too)
    classification_metrics,
    plot_confusion,
    score_classifier,
)
from modelworks.evaluate.metrics import fmt_ci
from modelworks.evaluate.report import md_table, training_table
from modelworks.models.registry import build_model, fill_from_data, model_config_from
from modelworks.progress import Reporter
from modelworks.tasks.base import Task, TaskOptions, TestData, option
from modelworks.tasks.text_classification_data import (  # noqa: F401  (public here too)
    classes_of,
    load_split,
    prepare,
    prepare_test,
)
from modelworks.tasks.text_encoding import _trim, classify_texts, encode, max_tokens, predict
from modelworks.train.data import DataError, EpochSampler, _Sampled
from modelworks.train.trainer import TrainSetup

if TYPE_CHECKING:
    from modelworks.evaluate.checkpoint import Checkpoint


# ---------------------------------------------------------------------------------------------
# tokens and batches


class TextLoader(_Sampled):
    """(ids, mask, label) batches of a shuffled epoch, padding trimmed per batch."""

    def __init__(self, ids, mask, y, batch_size: int, seed: int, rank=0, world=1) -> None:
        if len(ids) < batch_size * world:
            raise DataError(
                f"{len(ids)} training texts are fewer than one batch of {batch_size * world}; "
                "lower the batch_size or add data"
            )
        self.ids, self.mask, self.y = ids, mask, y
        self.sampler = EpochSampler(len(ids), batch_size, seed, rank, world)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(self.sampler.next_indices())
        ids, mask = _trim(self.ids[idx], self.mask[idx])
        return ids, mask, self.y[idx]


class Options(TaskOptions):
    """`tasks.text_classification:`"""

    pooling: Literal["mean", "cls"] = option(
        "mean",
        stage="finetune",
        description="pool encoder tokens by their mean or the first ([CLS]) token",
    )
    explain_samples: int = option(
        6,
        stage="evaluate",
        ge=0,
        description="test predictions (wrong ones first, then correct) shown with their top "
        "integrated-gradients tokens; 0 = none",
    )
    ig_steps: int = option(
        16, stage="evaluate", ge=2, description="integrated-gradients steps per sample"
    )


def ce_loss(model: nn.Module, batch) -> torch.Tensor:
    ids, mask, y = batch
    return F.cross_entropy(model(ids, mask).float(), y)


def _setup(cfg: Config, run_dir: Path, device, model, tok: Tokenizer, train_cfg, rank, world):
    max_len = min(train_cfg.seq_len, model.cfg.context_len)
    texts, y = load_split(run_dir, "train")
    ids, mask, n_trunc = encode(tok, texts, max_len)
    v_texts, vy = load_split(run_dir, "val")
    v_ids, v_mask, v_trunc = encode(tok, v_texts, max_len)
    loader = TextLoader(ids, mask, y, train_cfg.batch_size // world, cfg.seed, rank, world)

    def validate(m: nn.Module) -> dict[str, float]:
        logits = predict(m, v_ids, v_mask, device)
        return {
            "val_loss": F.cross_entropy(logits, vy).item(),
            "val_accuracy": (logits.argmax(1) == vy).float().mean().item(),
        }

    info = {
        "max_tokens": max_len,
        "train_texts": len(texts),
        "train_truncated": n_trunc,
        "val_truncated": v_trunc,
    }
    setup = TrainSetup(model, ce_loss, loader, validate, train_cfg.batch_size // world, "ex")
    return setup, info


def _tokenizer(path: Path) -> Tokenizer:
    if not path.is_file():
        raise DataError(f"{path} does not exist: the model has no tokenizer to read texts with")
    return Tokenizer.from_file(str(path))


def setup_training(
    cfg: Config, run_dir: Path, device: torch.device, rank: int = 0, world: int = 1
) -> TrainSetup:
    """From scratch: the `model:` section (an encoder) with the run's own BPE tokenizer."""
    tok = _tokenizer(run_dir / "preprocess" / "tokenizer.json")
    model_cfg = model_config_from(cfg.model)
    if not hasattr(model_cfg, "pooling"):
        raise ConfigError(
            f"task text_classification trains model.name: encoder, not {cfg.model.name!r}"
        )
    fill_from_data(model_cfg, vocab_size=tok.get_vocab_size(), n_classes=len(classes_of(run_dir)))
    model = build_model(model_cfg).to(device)
    return _setup(cfg, run_dir, device, model, tok, cfg.pretrain, rank, world)[0]


def setup_finetune(cfg: Config, run_dir: Path, device: torch.device, base) -> tuple:
    """From a pretrained encoder or decoder: the same body with a head for this data's labels
    (encoders pool by `tasks.text_classification.pooling`; decoders read the last real token)."""
    from modelworks.models.encoder import Encoder
    from modelworks.models.gpt import GPT
    from modelworks.models.gpt_classifier import GPTClassifierConfig

    if base.tokenizer is None:
        raise ConfigError(f"finetune.from={cfg.finetune.from_!r}: no tokenizer.json with it")
    n_classes = len(classes_of(run_dir))
    if isinstance(base.model, Encoder):
        arch = replace(base.model.cfg, n_classes=n_classes, pooling=TASK.options_from(cfg).pooling)
    elif isinstance(base.model, GPT):
        fields = {k: v for k, v in vars(base.model.cfg).items() if k != "n_classes"}
        arch = GPTClassifierConfig(**fields, n_classes=n_classes)
    else:
        raise ConfigError(
            f"finetune.from={cfg.finetune.from_!r} is a {type(base.model).__name__}; "
            "text_classification fine-tunes an encoder (minilm, a BERT folder, model.name: "
            "encoder) or a decoder (gpt, a Llama folder)"
        )
    model = build_model(arch)
    state = {k: v for k, v in base.model.state_dict().items() if not k.startswith("lm_head.")}
    if getattr(base.model.cfg, "n_classes", 0) != n_classes:  # a new task: a new head
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise ConfigError(f"finetune.from={cfg.finetune.from_!r}: weights do not fit {arch}")
    return _setup(cfg, run_dir, device, model.to(device), base.tokenizer, cfg.finetune, 0, 1)


# ---------------------------------------------------------------------------------------------
# evaluate


def evaluate(
    cfg: Config, run_dir: Path, out: Path, reporter: Reporter, ckpt: Checkpoint | None = None
):
    """Scores `ckpt` (evaluate/checkpoint.py; default: the one it chooses)."""
    from modelworks.evaluate.checkpoint import choose_checkpoint
    from modelworks.runtime import resolve_device
    from modelworks.train.checkpoint import load_model

    device = resolve_device(cfg.device)
    ckpt = ckpt or choose_checkpoint(cfg)
    stage, model_dir = ckpt.stage_dir.name, ckpt.folder
    model = load_model(model_dir, device).eval()
    tok = _tokenizer(tokenizer_path(run_dir, ckpt.stage_dir))
    classes = classes_of(run_dir)
    if getattr(model.cfg, "n_classes", 0) != len(classes):
        raise DataError(
            f"{model_dir}: the model predicts {getattr(model.cfg, 'n_classes', 0)} classes but "
            f"the data has {len(classes)} ({classes})"
        )
    split = cfg.evaluate.split or "test"
    texts, y = load_split(run_dir, split)
    if len(y) == 0 and cfg.evaluate.split is None:
        split = "val"
        texts, y = load_split(run_dir, split)
    train_cfg = cfg.finetune if stage == "finetune" else cfg.pretrain
    max_len = min(train_cfg.seq_len, model.cfg.context_len)
    ids, mask, n_trunc = encode(tok, texts, max_len)
    logits = predict(model, ids, mask, device)
    pred = logits.argmax(1).numpy()
    _, train_y = load_split(run_dir, "train")
    trained = json.loads((ckpt.stage_dir / "manifest.json").read_text())["summary"]
    metrics = score_classifier(logits, y, train_y, classes, split, cfg.evaluate.bootstrap, cfg.seed)
    metrics.update(max_tokens=max_len, truncated=n_trunc)
    metrics.update({k: v for k, v in trained.items() if k.startswith("dp_")})
    m = metrics
    reporter.info(
        f"[evaluate] {split} accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} on "
        f"{len(y)} texts (majority-class baseline {metrics['majority_baseline_accuracy']:.4f})"
        + (f"; {n_trunc} text(s) truncated to {max_len} tokens" if n_trunc else "")
    )
    plot_confusion(np.array(m["confusion_matrix"]), classes, out / "confusion.png")
    rows = [
        (f"{split} texts", str(len(y))),
        ("accuracy [95% CI]", fmt_ci(m["accuracy"], m.get("accuracy_ci"))),
        ("macro-F1 [95% CI]", fmt_ci(m["macro_f1"], m.get("macro_f1_ci"))),
        ("majority-class baseline accuracy", f"{metrics['majority_baseline_accuracy']:.4f}"),
        (f"texts truncated to {max_len} tokens", str(n_trunc)),
    ]
    if "dp_epsilon" in trained:
        rows.append(("DP (epsilon, delta)", f"({trained['dp_epsilon']}, {trained['dp_delta']})"))
    per_class = "\n".join(
        ["| class | precision | recall | support |", "|---|---|---|---|"]
        + [
            f"| {c} | {p:.3f} | {r:.3f} | {s} |"
            for c, p, r, s in zip(classes, m["precision"], m["recall"], m["support"], strict=True)
        ]
    )
    sections = [
        (f"Results ({split} split)", md_table(rows)),
        ("Per class", per_class),
        (f"Training ({stage})", training_table(trained)),
    ]
    images = [("confusion.png", "Confusion matrix")]
    options = TASK.options_from(cfg)
    if options.explain_samples:
        section, heat = attribution_section(
            model, tok, texts, y.numpy(), pred, classes, options, max_len, out
        )
        sections.insert(2, section)
        images += heat
    return metrics, sections, images


def attribution_section(model, tok, texts, y, pred, classes, e, max_len: int, out: Path):
    """A few held-out predictions, wrong ones first, then correct, each with its top tokens by
    integrated gradients (evaluate/explain.py, as /v1/explain); samples.json has the scores and
    token_heat.png the tokens coloured by attribution."""
    from modelworks.evaluate.explain import classifier_samples_section, plot_token_heat

    wrong = np.flatnonzero(pred != y)
    right = np.flatnonzero(pred == y)
    k = e.explain_samples  # half wrong when there are enough, the rest correct
    n_right = min(len(right), k - min(len(wrong), max(k // 2, 1)))
    picked = [*wrong[: k - n_right], *right[:n_right]]
    table, results = classifier_samples_section(
        model,
        tok,
        [texts[i] for i in picked],
        [int(y[i]) for i in picked],
        classes,
        n=len(picked),
        ig_steps=e.ig_steps,
        max_tokens=max_len,
    )
    samples = [
        {
            "index": int(i),
            "text": texts[i],
            "label": classes[int(y[i])],
            "predicted": classes[r["target"]["id"]],
            "probability": r["target"]["probability"],
            "tokens": r["tokens"],
            "attributions": r["attributions"],
            "top_tokens": r["top_tokens"],
        }
        for i, r in zip(picked, results, strict=True)
    ]
    atomic_write_json(out / "samples.json", samples)
    titles = [
        f"true {s['label']}, predicted {s['predicted']} ({s['probability']:.2f})" for s in samples
    ]
    heat = []
    if results:
        plot_token_heat(results, titles, out / "token_heat.png")
        heat = [("token_heat.png", "Token attributions of the sample predictions")]
    body = (
        f"{len(wrong)} of {len(y)} texts were misclassified. Below, {len(picked)} of the texts "
        "(misclassified ones first, then correct ones), each with the tokens that "
        f"pushed most towards the predicted class (integrated gradients, {e.ig_steps} steps, "
        "from a zero embedding; `samples.json` has every token's score).\n\n" + table
    )
    return ("Sample predictions and attributions", body), heat


# ---------------------------------------------------------------------------------------------
# serve


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    input: str | list[str] = Field(..., description="a text, or a list of texts")
    top_k: int | None = Field(None, ge=1, description="labels per text (default: every class)")
    model: str | None = Field(None, description="served model name (optional)")


class LabelProbability(BaseModel):
    label: str
    probability: float = Field(ge=0, le=1)


class Classified(BaseModel):
    index: int = Field(ge=0)
    label: str
    labels: list[LabelProbability]


class Classification(BaseModel):
    object: Literal["list"]
    model: str
    data: list[Classified]
    truncated: int = Field(ge=0, description="texts cut to the model's length")


def serve_routes(app, run_dir: Path, cfg, device: str) -> None:
    """`modelworks serve` hook: POST /v1/classify ({"input": text or [texts], "top_k"}) returns
    the top-k labels with probabilities; POST /v1/explain ({"input": text}) the attention maps
    and integrated-gradients token attributions of the predicted class (evaluate/explain.py)."""
    from modelworks.runtime import resolve_device
    from modelworks.serve.app import APIError, serve_model
    from modelworks.serve.schema import Explanation, answers
    from modelworks.train.checkpoint import load_model

    def load() -> dict:
        model_dir = final_model_dir(run_dir)
        dev = resolve_device(device)
        model = load_model(model_dir, dev).eval()
        tok = _tokenizer(tokenizer_path(run_dir, model_dir))
        classes = classes_of(run_dir)
        max_len = max_tokens(run_dir, model)
        return {"model": model, "tok": tok, "dev": dev, "classes": classes, "max_len": max_len}

    ready = serve_model(
        app,
        "classifier",
        load,
        info=lambda st: {"task": "text_classification", "classes": st["classes"]},
    )

    def _texts(req: ClassifyRequest) -> tuple[dict, list[str]]:
        state = ready(req.model)
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts or not all(t.strip() for t in texts):
            raise APIError(400, "input: a non-empty string or list of non-empty strings", "input")
        return state, texts

    @app.post("/v1/classify", responses=answers(Classification))
    def classify(req: ClassifyRequest):  # sync: FastAPI runs it in a worker thread
        state, texts = _texts(req)
        top_k = req.top_k or len(state["classes"])
        probs, _, _, n_trunc = classify_texts(
            state["model"], state["tok"], texts, state["max_len"], state["dev"]
        )
        top = torch.topk(probs, min(top_k, len(state["classes"])), dim=-1)
        data = [
            {
                "index": i,
                "label": state["classes"][int(top.indices[i, 0])],
                "labels": [
                    {"label": state["classes"][c], "probability": p}
                    for c, p in zip(top.indices[i].tolist(), top.values[i].tolist(), strict=True)
                ],
            }
            for i in range(len(texts))
        ]
        return {"object": "list", "model": state["name"], "data": data, "truncated": n_trunc}

    @app.post("/v1/explain", responses=answers(Explanation))
    def explain_text(req: ClassifyRequest):
        from modelworks.evaluate.explain import explain

        state, texts = _texts(req)
        if len(texts) != 1:
            raise APIError(400, "input: explain takes one text", "input")
        result = explain(state["model"], state["tok"], texts[0], max_tokens=state["max_len"])
        return {"object": "explanation", "model": state["name"], **result}


TASK = Task(
    name="text_classification",
    prepare=prepare,
    setup_training=setup_training,
    evaluate=evaluate,
    setup_finetune=setup_finetune,
    serve_routes=serve_routes,
    options=Options,
    test_data=TestData("documents", "a labelled table source (table, hf)", prepare_test),
)
