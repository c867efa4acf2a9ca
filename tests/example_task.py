"""A task written outside modelworks, as a user would: is a document longer than the median?

It exists to prove the Task contract (tasks/base.py): this one file, named by a config as
`task: tests.example_task`, runs through collect -> preprocess -> pretrain -> evaluate -> serve with
no change to modelworks. Features are a few length statistics of the text; the model is the
registered `mlp`; the endpoint is POST /v1/doc_length.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file

from modelworks.evaluate.report import md_table, training_table
from modelworks.models.registry import build_model, fill_from_data, model_config_from
from modelworks.tasks.base import Task, TaskOptions, option
from modelworks.train.checkpoint import load_model
from modelworks.train.data import ExampleLoader
from modelworks.train.trainer import TrainSetup

LABELS = ["short", "long"]


def features(text: str) -> list[float]:
    words = text.split()
    return [
        math.log1p(len(text)) / 10,
        math.log1p(len(words)) / 10,
        math.log1p(text.count("\n")) / 10,
        sum(c.isdigit() for c in text) / max(1, len(text)),
    ]


def _split(doc_id: str) -> str:
    h = zlib.crc32(doc_id.encode()) % 100
    return "train" if h < 70 else "val" if h < 85 else "test"


class Options(TaskOptions):
    """`tasks.doc_length:` (the Task's name, not its import path)"""

    quantile: float = option(
        0.5, stage="preprocess", gt=0, lt=1, description="a document is long above this quantile"
    )


def prepare(cfg, run_dir: Path, out: Path, reporter) -> dict:
    q = TASK.options_from(cfg).quantile
    docs = pq.read_table(run_dir / "collect" / "documents.parquet").to_pylist()
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for d in docs:
        splits[_split(d["id"])].append(d)
    median = sorted(len(d["text"]) for d in splits["train"])[int(len(splits["train"]) * q)]
    tensors = {}
    for name, rows in splits.items():
        tensors[f"{name}_x"] = torch.tensor([features(d["text"]) for d in rows]).reshape(-1, 4)
        tensors[f"{name}_y"] = torch.tensor([int(len(d["text"]) > median) for d in rows])
    save_file(tensors, str(out / "data.safetensors"))
    (out / "meta.json").write_text(json.dumps({"median_chars": median}))
    reporter.info(f"[preprocess] doc_length: median {median} characters")
    return {name: len(rows) for name, rows in splits.items()} | {"median_chars": median}


def _data(run_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    t = load_file(str(run_dir / "preprocess" / "data.safetensors"))
    return t[f"{split}_x"], t[f"{split}_y"]


def _loss(model, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def setup_training(cfg, run_dir: Path, device, rank: int = 0, world: int = 1) -> TrainSetup:
    x, y = _data(run_dir, "train")
    vx, vy = _data(run_dir, "val")
    model_cfg = model_config_from(cfg.model)
    fill_from_data(model_cfg, in_features=x.shape[1], n_classes=len(LABELS))
    model = build_model(model_cfg).to(device)
    p = cfg.pretrain
    loader = ExampleLoader(x, y, p.batch_size // world, cfg.seed, rank, world)

    def validate(m) -> dict[str, float]:
        with torch.no_grad():
            logits = m(vx.to(device)).cpu()
        acc = (logits.argmax(1) == vy).float().mean().item()
        return {"val_loss": F.cross_entropy(logits, vy).item(), "val_accuracy": acc}

    return TrainSetup(model, _loss, loader, validate, p.batch_size // world, "ex")


def evaluate(cfg, run_dir: Path, out: Path, reporter, ckpt=None):
    from modelworks.evaluate.checkpoint import choose_checkpoint

    ckpt = ckpt or choose_checkpoint(cfg)
    model = load_model(ckpt.folder, torch.device("cpu")).eval()
    x, y = _data(run_dir, "test")
    with torch.no_grad():
        pred = model(x).argmax(1)
    accuracy = (pred == y).float().mean().item()
    majority = int(torch.bincount(_data(run_dir, "train")[1]).argmax())
    baseline = (y == majority).float().mean().item()
    metrics = {"split": "test", "rows": len(y), "accuracy": accuracy, "majority": baseline}
    trained = json.loads((ckpt.stage_dir / "manifest.json").read_text())["summary"]
    sections = [
        ("Results (test split)", md_table([("accuracy", f"{accuracy:.4f}")])),
        ("Training", training_table(trained)),
    ]
    return metrics, sections, []


class LengthRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    input: str = Field(..., min_length=1, description="a document")
    model: str | None = None


class LengthAnswer(BaseModel):
    object: str = "doc_length"
    model: str
    label: str
    probability: float


def serve_routes(app, run_dir: Path, cfg, device: str) -> None:
    from modelworks.serve.app import serve_model

    ready = serve_model(
        app,
        "doc_length",
        lambda: {"model": load_model(Path(run_dir) / "pretrain", torch.device("cpu")).eval()},
        info=lambda state: {"task": "tests.example_task"},
    )

    @app.post("/v1/doc_length", response_model=LengthAnswer)
    def doc_length(req: LengthRequest) -> LengthAnswer:
        state = ready(req.model)
        with torch.no_grad():
            probs = torch.softmax(state["model"](torch.tensor([features(req.input)])), -1)[0]
        k = int(probs.argmax())
        return LengthAnswer(model=state["name"], label=LABELS[k], probability=float(probs[k]))


TASK = Task(
    name="doc_length",
    prepare=prepare,
    setup_training=setup_training,
    evaluate=evaluate,
    serve_routes=serve_routes,
    options=Options,
)
