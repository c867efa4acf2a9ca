"""`POST /v1/images/generations` for image-generation runs, in OpenAI's Images API shape.

The prompt names a class (its name, case-insensitive, or its index); the answer holds `n` PNGs
as base64, sampled from the run's EMA weights with the run's sampler settings (or the request's
`steps` / `guidance_scale`, extensions OpenAI does not have). `size` ("WxH", square) scales the
model's native images up with nearest-neighbour pixels; `seed` makes the images reproducible.

    curl 127.0.0.1:8000/v1/images/generations -H 'content-type: application/json' \
         -d '{"prompt": "7", "n": 4, "size": "64x64", "response_format": "b64_json", "seed": 1}'

An unknown class is a 400 naming the classes the model knows (`param: prompt`).
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
from pathlib import Path
from typing import Literal

import torch
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from modelworks.artifacts import final_model_dir
from modelworks.config import ServeConfig
from modelworks.serve.app import APIError, serve_model

MAX_SIZE = 1024


class ImageGenerationRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    prompt: str = Field(..., description="a class name (or its index) the model was trained on")
    model: str | None = None
    n: int = Field(1, ge=1, le=16, description="images to generate")
    size: str = Field("auto", description="'WxH' (square, up to 1024) or 'auto' (native size)")
    response_format: Literal["b64_json"] = Field(
        "b64_json", description="b64_json only: this server keeps no image URLs"
    )
    seed: int | None = Field(None, ge=0, description="same seed, same images")
    steps: int | None = Field(None, ge=1, le=1000, description="sampler steps (extension)")
    guidance_scale: float | None = Field(None, ge=0, le=20, description="CFG w (extension)")


class GeneratedImage(BaseModel):
    b64_json: str
    revised_prompt: str  # the class the prompt named


class ImagesResponse(BaseModel):
    created: int
    model: str
    data: list[GeneratedImage]


def class_index(prompt: str, classes: list[str]) -> int:
    """The class a prompt names: its name (case-insensitive) or its index; else a 400."""
    wanted = prompt.strip().lower()
    for i, c in enumerate(classes):
        if str(c).lower() == wanted:
            return i
    if wanted.isdigit() and int(wanted) < len(classes):
        return int(wanted)
    shown = ", ".join(str(c) for c in classes[:50]) + (" ..." if len(classes) > 50 else "")
    raise APIError(
        400, f"prompt: {prompt!r} is not a class this model knows; known: {shown}", "prompt"
    )


def parse_size(size: str, native: int) -> int:
    if size == "auto":
        return native
    m = re.fullmatch(r"(\d+)x(\d+)", size)
    if not m or m[1] != m[2] or not native <= int(m[1]) <= MAX_SIZE:
        raise APIError(
            400,
            f"size: {size!r} must be 'auto' or square 'WxH' from {native}x{native} (the model's "
            f"size) to {MAX_SIZE}x{MAX_SIZE}",
            "size",
        )
    return int(m[1])


def png_b64(img: torch.Tensor, size: int) -> str:
    """uint8 (C, H, W) -> base64 PNG, scaled to size x size with nearest-neighbour pixels."""
    from PIL import Image

    arr = img.numpy()
    pil = Image.fromarray(arr[0]) if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0))
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def add_routes(app: FastAPI, run_dir: Path, cfg: ServeConfig, device: str, defaults: dict) -> None:
    """`defaults`: the run's sampler settings {steps, guidance, sampler}."""
    from modelworks.models.flow import sample, to_uint8
    from modelworks.runtime import resolve_device
    from modelworks.train.checkpoint import load_model

    def load() -> dict:
        meta = json.loads((Path(run_dir) / "preprocess" / "labels.json").read_text())
        dev = resolve_device(device)
        net = load_model(final_model_dir(run_dir), dev).eval().ema
        return {"net": net, "meta": meta, "dev": dev}

    ready = serve_model(
        app,
        "generator",
        load,
        info=lambda st: {"task": "image_generation", "classes": st["meta"]["classes"]},
    )

    @app.post("/v1/images/generations", response_model=ImagesResponse)
    def generations(req: ImageGenerationRequest) -> ImagesResponse:
        state = ready(req.model)
        meta = state["meta"]
        k = class_index(req.prompt, [str(c) for c in meta["classes"]])
        size = parse_size(req.size, meta["image_size"])
        labels = torch.full((req.n,), k, dtype=torch.int64, device=state["dev"])
        shape = (meta["channels"], meta["image_size"], meta["image_size"])
        x = sample(
            state["net"], labels, shape, len(meta["classes"]),
            steps=req.steps or defaults["steps"],
            guidance=defaults["guidance"] if req.guidance_scale is None else req.guidance_scale,
            sampler=defaults["sampler"], seed=req.seed,
        )  # fmt: skip
        name = str(meta["classes"][k])
        data = [GeneratedImage(b64_json=png_b64(img, size), revised_prompt=name)
                for img in to_uint8(x)]  # fmt: skip
        return ImagesResponse(created=int(time.time()), model=state["name"], data=data)
