"""`POST /v1/images/classify` for image-classification runs (added by the task's `serve_routes`).

An image is decoded, converted and resized exactly as preprocess did (`preprocess.images.decode`),
normalised with the training split's mean/std from labels.json, and classified; the answer is the
top-k labels with softmax probabilities. Send images either as multipart form files (field
`image`, repeatable; optional form field `top_k`) or as JSON:

    curl 127.0.0.1:8000/v1/images/classify -F image=@digit.png -F top_k=3
    curl 127.0.0.1:8000/v1/images/classify -H 'content-type: application/json' \
         -d '{"image": "<base64 or data: URL>", "top_k": 3}'      # or "images": [...]
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, Request

from modelworks.artifacts import final_model_dir
from modelworks.config import ServeConfig
from modelworks.serve.app import APIError, serve_model


def add_routes(app: FastAPI, run_dir: Path, cfg: ServeConfig, device: str) -> None:
    from modelworks.runtime import resolve_device
    from modelworks.train.checkpoint import load_model

    def load() -> dict:
        meta = json.loads((Path(run_dir) / "preprocess" / "labels.json").read_text())
        dev = resolve_device(device)
        return {"model": load_model(final_model_dir(run_dir), dev).eval(), "meta": meta, "dev": dev}

    ready = serve_model(
        app,
        "classifier",
        load,
        info=lambda st: {"task": "image_classification", "classes": st["meta"]["classes"]},
    )

    @app.post("/v1/images/classify")
    async def classify(request: Request):
        ready()  # 503 while loading, before the body is read
        images, top_k, model = await _read(request)
        state = ready(model)
        meta = state["meta"]
        n_classes = len(meta["classes"])
        if not images:
            raise APIError(400, "image: send at least one image", "image")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise APIError(400, f"top_k: must be a positive integer (got {top_k!r})", "top_k")
        x = np.stack([_decode(data, i, meta) for i, data in enumerate(images)])
        x = (torch.from_numpy(x).float() / 255 - meta["mean"]) / meta["std"]
        with torch.no_grad():
            probs = torch.softmax(state["model"](x.to(state["dev"])).float().cpu(), dim=-1)
        top = torch.topk(probs, min(top_k, n_classes), dim=-1)
        data = [
            {
                "index": i,
                "labels": [
                    {"label": str(meta["classes"][c]), "class_index": c, "probability": p}
                    for c, p in zip(top.indices[i].tolist(), top.values[i].tolist(), strict=True)
                ],
            }
            for i in range(len(images))
        ]
        return {"object": "list", "model": state["name"], "data": data}


async def _read(request: Request) -> tuple[list[bytes], object, str | None]:
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        try:
            form = await request.form()
        except AssertionError:  # starlette without python-multipart
            raise APIError(
                400, "multipart uploads need python-multipart installed; send JSON base64"
            ) from None
        files = [await f.read() for f in form.getlist("image") if hasattr(f, "read")]
        top_k = form.get("top_k", "5")
        top_k = int(top_k) if str(top_k).isdigit() else top_k
        return files, top_k, form.get("model")
    body = await json_object(request)
    items = body.get("images", [body["image"]] if "image" in body else [])
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise APIError(400, "images: must be a list of base64 strings", "images")
    out = [image_bytes(s, i) for i, s in enumerate(items)]
    return out, body.get("top_k", 5), body.get("model")


async def json_object(request: Request) -> dict:
    """The request's JSON body, which the image endpoints want as an object."""
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise APIError(400, "body is not valid JSON (or not UTF-8)") from None
    if not isinstance(body, dict):
        raise APIError(400, "body must be a JSON object with 'image' or 'images'")
    return body


def image_bytes(s: str, i: int) -> bytes:
    """Image `i` of a request: base64, optionally as a data: URL."""
    if s.startswith("data:"):
        s = s.partition(",")[2]
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"images.{i}: not valid base64", f"images.{i}") from None


def _decode(data: bytes, i: int, meta: dict) -> np.ndarray:
    from modelworks.preprocess.images import decode

    try:
        return decode(data, meta["image_size"], meta["channels"])
    except Exception as e:  # Pillow raises many types for corrupt input
        raise APIError(
            400, f"image {i}: not a readable image ({type(e).__name__})", "image"
        ) from None
