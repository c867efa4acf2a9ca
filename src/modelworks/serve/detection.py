"""`POST /v1/images/detect` for object-detection runs (added by the task's `serve_routes`).

An image is decoded and resized exactly as preprocess did (`preprocess.images.decode`),
normalised with the training split's mean/std, and run through the detector; boxes come back in
the uploaded image's own pixels, [x1, y1, x2, y2], with a label and a score, best first. Send
multipart form files (field `image`, repeatable; form fields `score_threshold`,
`max_detections`) or JSON:

    curl 127.0.0.1:8000/v1/images/detect -F image=@scene.png -F score_threshold=0.5
    curl 127.0.0.1:8000/v1/images/detect -H 'content-type: application/json' \
         -d '{"image": "<base64 or data: URL>", "score_threshold": 0.3, "max_detections": 20}'
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelworks.artifacts import final_model_dir
from modelworks.config import ServeConfig
from modelworks.serve.app import APIError, serve_model
from modelworks.serve.images import image_bytes, json_object


class DetectRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    image: str | None = Field(None, description="one image, base64 or a data: URL")
    images: list[str] | None = Field(None, description="several images, base64 or data: URLs")
    score_threshold: float | None = Field(None, ge=0, le=1, description="lowest score returned")
    max_detections: int | None = Field(None, ge=1, le=1000, description="boxes per image at most")
    model: str | None = None


class Detection(BaseModel):
    box: list[float] = Field(description="[x1, y1, x2, y2] in the image's pixels")
    label: str
    class_index: int
    score: float


class ImageDetections(BaseModel):
    index: int
    width: int
    height: int
    detections: list[Detection]


class DetectResponse(BaseModel):
    object: str = "list"
    model: str
    data: list[ImageDetections]


def add_routes(
    app: FastAPI, run_dir: Path, cfg: ServeConfig, device: str, defaults: dict | None = None
) -> None:
    from modelworks.runtime import resolve_device
    from modelworks.train.checkpoint import load_model

    defaults = {"score_threshold": 0.3, "max_detections": 100, **(defaults or {})}

    def load() -> dict:
        meta = json.loads((Path(run_dir) / "preprocess" / "labels.json").read_text())
        dev = resolve_device(device)
        return {"model": load_model(final_model_dir(run_dir), dev).eval(), "meta": meta, "dev": dev}

    ready = serve_model(app, "detector", load,
                        info=lambda st: {"task": "object_detection",
                                         "classes": st["meta"]["classes"]})  # fmt: skip

    @app.post("/v1/images/detect", response_model=DetectResponse)
    async def detect(request: Request) -> DetectResponse:
        ready()  # 503 while loading, before the body is read
        req, files = await _read(request)
        state = ready(req.model)
        meta, model = state["meta"], state["model"]
        items = files if files is not None else req.images or ([req.image] if req.image else [])
        if not items:
            raise APIError(400, "image: send at least one image", "image")
        threshold = req.score_threshold
        threshold = defaults["score_threshold"] if threshold is None else threshold
        limit = req.max_detections or defaults["max_detections"]
        data = []
        for i, item in enumerate(items):
            raw = item if isinstance(item, bytes) else image_bytes(item, i)
            x, (w, h) = _decode(raw, i, meta)
            x = (torch.from_numpy(x[None]).float() / 255 - meta["mean"]) / meta["std"]
            found = model.detect(x.to(state["dev"]), threshold, limit)[0]
            scale = torch.tensor([w, h, w, h], dtype=torch.float32) / meta["image_size"]
            boxes = (found["boxes"].cpu() * scale).clamp(min=0)
            boxes = torch.minimum(boxes, torch.tensor([w, h, w, h], dtype=torch.float32))
            dets = [
                Detection(
                    box=[round(v, 2) for v in b],
                    label=str(meta["classes"][c]),
                    class_index=c,
                    score=round(s, 4),
                )  # fmt: skip
                for b, s, c in zip(
                    boxes.tolist(), found["scores"].tolist(), found["labels"].tolist(), strict=True
                )  # fmt: skip
            ]
            data.append(ImageDetections(index=i, width=w, height=h, detections=dets))
        return DetectResponse(model=state["name"], data=data)


def _invalid(e: ValidationError) -> APIError:
    err = e.errors()[0]
    param = ".".join(str(p) for p in err["loc"])
    return APIError(400, f"{param}: {err['msg']} (got {err.get('input')!r})", param)


async def _read(request: Request) -> tuple[DetectRequest, list[bytes] | None]:
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form()
        files = [await f.read() for f in form.getlist("image") if hasattr(f, "read")]
        fields = {}
        for key, cast in (("score_threshold", float), ("max_detections", int)):
            if form.get(key) not in (None, ""):
                try:
                    fields[key] = cast(form.get(key))
                except ValueError:
                    raise APIError(400, f"{key}: not a number ({form.get(key)!r})", key) from None
        if form.get("model"):
            fields["model"] = str(form.get("model"))
        try:
            return DetectRequest.model_validate(fields), files
        except ValidationError as e:
            raise _invalid(e) from None
    body = await json_object(request)
    try:
        return DetectRequest.model_validate(body), None
    except ValidationError as e:
        raise _invalid(e) from None


def _decode(data: bytes, i: int, meta: dict) -> tuple[np.ndarray, tuple[int, int]]:
    from PIL import Image

    from modelworks.preprocess.images import decode

    try:
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
        return decode(data, meta["image_size"], meta["channels"]), size
    except Exception as e:  # Pillow raises many types for corrupt input
        raise APIError(
            400, f"image {i}: not a readable image ({type(e).__name__})", "image"
        ) from None
