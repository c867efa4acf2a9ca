"""`POST /v1/users/score`: a user's propensity, segment, top-k items and the events that weighed
most, from their recent events or from an id the run knows.

    curl 127.0.0.1:8000/v1/users/score -H 'content-type: application/json' -d '{"events": [
      {"time": "2026-04-20T10:00:00", "event": "view", "item": "shoes-003", "category": "shoes"}]}'

A known `user` is the raw id: the server pseudonymises it with the key in
MODELWORKS_PSEUDONYM_KEY (the same key the run was collected with; pseudonyms.py) and scores
the user's whole log as of its last event. Segments come from the evaluate stage's k-means
(evaluate/segments.json); top-k items are the next-event distribution over categories (or items)
times each item's popularity inside its category, items already seen left out.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from modelworks import pseudonyms
from modelworks.tasks import user_behaviour_extra as extra_cols
from modelworks.tasks.user_behaviour_data import (
    N_GAPS,
    Vocab,
    gap_bucket,
    history_features,
    load_windows,
)
from modelworks.tasks.user_behaviour_options import Options


class Event(BaseModel):
    # other fields are kept: a run trained with extra_columns reads them by name
    model_config = ConfigDict(extra="allow")
    time: datetime = Field(..., description="ISO 8601 date-time")
    event: str = Field(..., min_length=1, description="event name, e.g. view, cart, purchase")
    item: str | None = None
    category: str | None = None
    value: float | None = Field(None, description="revenue, for the target event")


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    user: str | None = Field(None, description="an id the run knows (raw; pseudonymised here)")
    events: list[Event] = Field(default_factory=list, description="recent events, any order")
    at: datetime | None = Field(None, description="score as of this time; default: now (events)")
    k: int | None = Field(None, ge=1, le=1000, description="items to return")
    model: str | None = None


class Weighed(BaseModel):
    from_end: int
    value: str | None = None
    event: str | None = None
    gap_bucket: int
    weight: float


class ScoreResponse(BaseModel):
    object: str = "user_score"
    model: str
    user: str | None
    propensity: float
    segment: int | None
    items: list[dict]
    weighed_most: list[Weighed]
    warnings: list[str]


def tokens(events: list[Event], vocab: Vocab, field: str, at: datetime, max_len: int):
    """(token tensor (1, T), kept events, warnings) for a request's events."""
    warnings = []
    evs = sorted(events, key=lambda e: e.time)[-(max_len - 1) :]
    times = np.array([_ts(e.time) for e in evs])
    gaps = gap_bucket(np.diff(times, prepend=np.nan))
    toks = []
    unknown = sorted({e.event for e in evs if e.event not in vocab.event_index})
    if unknown:
        warnings.append(f"ignored events with unknown names: {', '.join(unknown[:5])}")
    other = len(vocab.values) - 1
    kept = []
    for e, g in zip(evs, gaps, strict=True):
        if e.event not in vocab.event_index:
            continue
        v = vocab.value_index.get(getattr(e, field) or "(none)", other)
        toks.append(vocab.token(v, vocab.event_index[e.event], int(g)))
        kept.append(e)
    since = _ts(at) - times[-1] if len(times) else np.nan
    toks.append(vocab.cutoff_base + int(gap_bucket(np.array([since]))[0]))
    return torch.tensor([toks]), kept, warnings


def request_features(events: list[Event], target: str, at: datetime) -> torch.Tensor:
    """The whole-history features (RFM_FEATURES) of a request's events, as of `at`."""
    times = [_ts(e.time) for e in events]
    now = _ts(at)
    hits = [e for e in events if e.event == target]
    rfm = [
        (now - max(times)) / 86400 if times else 0.0,
        len(hits),
        sum(e.value or 0.0 for e in hits),
        (now - min(times)) / 86400 if times else 0.0,
        len(events),
    ]
    return history_features([rfm])


def _ts(t: datetime) -> float:
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def load_state(run_dir: Path, device) -> dict:
    from modelworks.artifacts import best_or_final, final_model_dir
    from modelworks.train.checkpoint import load_model

    run_dir = Path(run_dir)
    model = load_model(best_or_final(final_model_dir(run_dir)), device).eval()
    tensors, users, vocab = load_windows(run_dir)
    items = json.loads((run_dir / "preprocess" / "items.json").read_text())
    spec = extra_cols.load_spec(run_dir)
    seg_path = run_dir / "evaluate" / "segments.json"
    segs = json.loads(seg_path.read_text()) if seg_path.is_file() else None
    return {
        "model": model,
        "vocab": vocab,
        "now_x": tensors["now_x"],
        "now_items": tensors["now_items"],
        "now_feats": history_features(tensors["now_rfm"]),
        "now_extra": tensors.get("now_extra"),
        "extra_spec": spec,
        "index": {u: i for i, u in enumerate(users["now"])},
        "items": items,
        "segments": segs,
        "device": device,
    }


def request_extra(st: dict, kept: list[Event], width: int) -> torch.Tensor | None:
    """Extra-column ids of a request's kept events, for a run trained with extra_columns."""
    if not st["extra_spec"]:
        return None
    return torch.from_numpy(extra_cols.events_ids(kept, st["extra_spec"], width))


def score_user(st: dict, x, feats, seen: set[str], k: int, field: str, extra=None) -> dict:
    model, vocab = st["model"], st["vocab"]
    x = x.to(st["device"])
    extra = None if extra is None else extra.to(st["device"])
    p, attr = model.attributions(x, feats.to(st["device"]), extra)
    n = x.shape[1] - 1
    order = np.argsort(-np.abs(attr[:n]))[:5]
    why = [
        Weighed(
            from_end=int(n - j),
            **{k2: v for k2, v in vocab.describe(int(x[0, j])).items() if k2 != "token"},
            weight=float(attr[j]),
        )
        for j in order
    ]
    with torch.no_grad():
        h = model.hidden(x, extra=extra)
        # the next event after the last real one: the cutoff token itself never has a next
        # token in training, so its state is not a next-event prediction
        last = h[:, max(0, x.shape[1] - 2)]
        probs = torch.softmax((last @ model.tok_emb.weight.T).float(), -1)[0].cpu().numpy()
    value_p = np.zeros(len(vocab.values))
    base = np.arange(1, vocab.cutoff_base)
    np.add.at(value_p, (base - 1) // (len(vocab.events) * N_GAPS), probs[1 : vocab.cutoff_base])
    items = st["items"]
    keys = items["categories"] if field == "category" else items["items"]
    counts = np.array(items["counts"], np.float64)
    totals: dict[str, float] = {}
    for key, c in zip(keys, counts, strict=True):
        totals[key] = totals.get(key, 0.0) + c
    scores = np.array(
        [
            value_p[vocab.value_index.get(key, len(vocab.values) - 1)] * c / totals[key]
            for key, c in zip(keys, counts, strict=True)
        ]
    )
    ranked = [
        (items["items"][i], float(scores[i]))
        for i in np.argsort(-scores)
        if items["items"][i] not in seen
    ][:k]
    segment = None
    if st["segments"]:
        s = st["segments"]
        pooled = model.pooled(h, x)[0].float().cpu().numpy()
        z = (pooled - np.array(s["mean"])) / np.array(s["std"])
        segment = int(np.argmin(((np.array(s["centroids"]) - z) ** 2).sum(1)))
    return {
        "propensity": p,
        "segment": segment,
        "why": why,
        "items": [{"item": i, "score": round(v, 6)} for i, v in ranked],
    }


def stored_options(run_dir: Path) -> Options:
    """The run's own `tasks.user_behaviour:` section (its config.yaml)."""
    import yaml

    stored = yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8")) or {}
    return Options.model_validate((stored.get("tasks") or {}).get("user_behaviour") or {})


def serve_routes(app, run_dir: Path, cfg, device: str = "auto") -> None:
    """Adds `POST /v1/users/score` (ScoreRequest -> ScoreResponse)."""
    from fastapi.concurrency import run_in_threadpool

    from modelworks.runtime import resolve_device
    from modelworks.serve.app import APIError, serve_model

    opt = stored_options(run_dir)
    name = getattr(cfg, "model_name", None) or Path(run_dir).name
    ready = serve_model(
        app,
        name,
        lambda: load_state(run_dir, resolve_device(device)),
        name,
        info=lambda st: {"task": "user_behaviour"},
    )

    def run(req: ScoreRequest, st: dict) -> ScoreResponse:
        field, warnings = opt.token_field, []
        k = req.k or opt.top_k
        if req.user is not None:
            key, where = pseudonyms.key()
            if where != "env":
                raise APIError(400, f"lookups by user id need {pseudonyms.ENV} set", "user")
            pid = pseudonyms.pseudonym(req.user, key)
            if pid not in st["index"]:
                raise APIError(404, "user: this run has no events of that user", "user")
            i = st["index"][pid]
            row = st["now_x"][i]
            x = row[: int((row > 0).sum())][None]
            ex = None if st["now_extra"] is None else st["now_extra"][i : i + 1, : x.shape[1]]
            seen_idx = st["now_items"][i]
            seen = {st["items"]["items"][j] for j in seen_idx.tolist() if j >= 0}
            user = pid
            feats = st["now_feats"][i : i + 1]
        elif req.events:
            at = req.at or datetime.now(timezone.utc)
            x, kept, warnings = tokens(req.events, st["vocab"], field, at, st["model"].cfg.max_len)
            ex = request_extra(st, kept, x.shape[1])
            seen = {e.item for e in kept if e.item}
            feats = request_features(req.events, opt.target_event, at)
            user = None
        else:
            raise APIError(400, "give `user` (an id the run knows) or `events`", "events")
        r = score_user(st, x, feats, seen, k, field, ex)
        return ScoreResponse(
            model=st["name"],
            user=user,
            propensity=r["propensity"],
            segment=r["segment"],
            items=r["items"],
            weighed_most=r["why"],
            warnings=warnings,
        )

    @app.post("/v1/users/score", response_model=ScoreResponse)
    async def users_score(req: ScoreRequest) -> ScoreResponse:
        st = ready(req.model)
        return await run_in_threadpool(run, req, st)
