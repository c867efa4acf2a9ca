"""Serving a recommendation run: the model and its item mapping (`Recommender`), top-k next items
after a history (`recommend`), and `POST /v1/recommend` (tasks/recommendation.py has the task)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import nn

from modelworks.artifacts import best_or_final


def model_dir(run_dir: Path) -> Path:
    """The checkpoint to serve: the best validation one when there is one."""
    return best_or_final(run_dir / "pretrain")


@dataclass
class Recommender:
    model: nn.Module
    items: list[str]  # id - 1 -> name
    counts: list[int]  # training-data popularity, for histories with no known item
    device: torch.device
    index: dict[str, int] = field(init=False)  # name -> id

    def __post_init__(self) -> None:
        self.index = {name: i + 1 for i, name in enumerate(self.items)}


def load_recommender(path: str | Path, device: str | torch.device = "cpu") -> Recommender:
    """From a run folder, its pretrain/ folder, or a model folder holding items.json."""
    from modelworks.train.checkpoint import CheckpointError, load_model

    path = Path(path)
    mdir = model_dir(path) if (path / "pretrain").is_dir() else path
    items_json = next(
        (p for p in (mdir / "items.json", mdir.parent / "items.json") if p.is_file()), None
    )
    if items_json is None:
        raise CheckpointError(f"{mdir}: no items.json (item-id mapping) next to the model")
    meta = json.loads(items_json.read_text())
    model = load_model(mdir, device).eval()
    return Recommender(model, meta["items"], meta["counts"], torch.device(device))


def recommend(
    source: Recommender | str | Path,
    recent_items: list[str],
    k: int = 10,
    exclude_seen: bool = True,
) -> dict:
    """Top-k next items after `recent_items` (oldest first): {items: [{item, score}], warnings}.

    Unknown items are ignored with a warning; with no known item at all, the most popular
    items come back (score = training count) with a warning saying so."""
    rec = source if isinstance(source, Recommender) else load_recommender(source)
    known, unknown = [], []
    for name in recent_items:
        (known if name in rec.index else unknown).append(name)
    warnings = []
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        warnings.append(f"ignored {len(unknown)} unknown item(s): {shown}")
    if known:
        ids = np.array([rec.index[n] for n in known], dtype=np.int64)
        scores = rec.model.next_item_scores([ids])[0]
    else:
        warnings.append("no known item in the history: returning the most popular items")
        scores = torch.tensor([-torch.inf, *map(float, rec.counts)])
    scores[0] = -torch.inf
    if exclude_seen and known:
        scores[torch.tensor([rec.index[n] for n in known])] = -torch.inf
    k = max(0, min(k, int(torch.isfinite(scores).sum())))
    top = torch.topk(scores, k)
    return {
        "items": [
            {"item": rec.items[i - 1], "score": round(float(s), 6)}
            for s, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        ],
        "warnings": warnings,
    }


class RecommendRequest(BaseModel):
    items: list[str] = Field(..., description="the user's recent items, oldest first")
    k: int = Field(10, ge=1, le=1000, description="how many items to return")
    exclude_seen: bool = Field(True, description="leave out items already in `items`")
    model: str | None = Field(None, description="served model name (optional)")


def serve_routes(app, run_dir: Path, cfg, device: str = "auto") -> None:
    """Adds `POST /v1/recommend`: {"items": [recent item names, oldest first], "k": 10,
    "exclude_seen": true} -> {"object": "recommendation", "model", "items": [{item, score}],
    "warnings": [...]}."""
    from fastapi.concurrency import run_in_threadpool

    from modelworks.runtime import resolve_device
    from modelworks.serve.app import serve_model

    name = cfg.model_name or Path(run_dir).name
    ready = serve_model(
        app,
        name,
        lambda: {"rec": load_recommender(run_dir, resolve_device(device))},
        name,
        info=lambda st: {"task": "recommendation", "items": len(st["rec"].items)},
    )

    @app.post("/v1/recommend")
    async def recommend_route(req: RecommendRequest):
        rec = ready(req.model)["rec"]
        result = await run_in_threadpool(recommend, rec, req.items, req.k, req.exclude_seen)
        return {"object": "recommendation", "model": name, **result}
