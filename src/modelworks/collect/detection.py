"""Object-detection sources: each yields {"id", "image" (encoded bytes), "boxes" (JSON), "width",
"height", "source", "split"}; `boxes` is a list of {"bbox": [x, y, w, h] in pixels, "label"}.

- `digit_scenes`: built-in scenes drawn from scikit-learn's 8x8 digits: 2-5 digits per 64x64
  canvas at a random scale (12-28 px) and position, overlapping a little (IoU <= 0.25), with a
  seeded generator; each box is the tight box of the digit's ink. Split by scene, and the val
  and test scenes draw their digits from a held-out fifth of the digit images.
- `coco`: COCO JSON files (`images`, `annotations` with `bbox` [x, y, w, h], `categories`);
  images are read from `image_dir` (default: the JSON file's folder).
- `yolo`: image folders whose labels are YOLO txt files (one per image, lines `class cx cy w h`,
  normalised): `<stem>.txt` beside the image, or in the `labels/` folder that mirrors an
  `images/` folder. Class names come from `classes.txt` beside the labels or the images (else
  the class index).

Bad input is skipped and counted per reason (collect/rows.py's BadRows): a box outside the image
is clipped to it (counted as a problem) and skipped when nothing is left; a negative or zero
size, an annotation naming an unknown image or category, a YOLO line with the wrong number of
fields or a class without a name: skipped. Images of mixed sizes are kept (preprocess resizes).
"""

from __future__ import annotations

import glob
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from modelworks.collect.rows import BadRows
from modelworks.collect.source import Paths, Source
from modelworks.collect.sources import IMAGE_SUFFIXES, _png

CANVAS = 64  # digit_scenes: canvas height and width in pixels
SCENES = 2000  # digit_scenes: scenes generated (collect.sources.N.limit takes fewer)


def _iou(a: list[float], b: list[float]) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter + 1e-9)


def digit_scenes(seed: int = 0, count: int = SCENES) -> Iterator[dict]:
    """Built-in detection scenes from scikit-learn's digits (see the module docstring)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    pixels = np.round(data.images * (255 / 16)).astype(np.uint8)
    held_out = np.arange(len(pixels)) % 5 == 0  # digits only val/test scenes use
    pools = {"train": np.flatnonzero(~held_out), "eval": np.flatnonzero(held_out)}
    for k in range(count):
        rng = np.random.default_rng([seed, k])
        split = "test" if k % 10 == 0 else "val" if k % 10 == 1 else "train"
        pool = pools["train" if split == "train" else "eval"]
        canvas = rng.integers(0, 24, (CANVAS, CANVAS)).astype(np.uint8)  # faint noise
        boxes: list[dict] = []
        for _ in range(int(rng.integers(2, 6))):
            i = int(rng.choice(pool))
            size = int(rng.integers(12, 29))
            digit = np.asarray(
                Image.fromarray(pixels[i]).resize((size, size), Image.Resampling.BILINEAR)
            )
            ys, xs = np.nonzero(digit > 48)
            for _ in range(30):  # a place overlapping the others a little at most
                x0, y0 = (int(v) for v in rng.integers(0, CANVAS - size + 1, 2))
                box = [x0 + int(xs.min()), y0 + int(ys.min())]
                box += [int(xs.max()) - int(xs.min()) + 1, int(ys.max()) - int(ys.min()) + 1]
                if all(_iou(box, b["bbox"]) <= 0.25 for b in boxes):
                    region = canvas[y0 : y0 + size, x0 : x0 + size]
                    np.maximum(region, digit, out=region)
                    boxes.append({"bbox": box, "label": str(int(data.target[i]))})
                    break
        yield {
            "id": f"digit_scenes:{k}",
            "image": _png(canvas),
            "boxes": json.dumps(boxes),
            "width": CANVAS,
            "height": CANVAS,
            "source": "digit_scenes (sklearn.datasets.load_digits)",
            "split": split,
        }


def _files(patterns: list[str], where: str, what: str) -> list[Path]:
    if not patterns:
        raise FileNotFoundError(f"{where}.paths: empty; give {what}")
    out = []
    for pattern in patterns:
        hits = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
        if len(hits) == 1 and hits[0].is_dir():
            hits = sorted(p for p in hits[0].rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        hits = [h for h in hits if h.is_file()]
        if not hits:
            raise FileNotFoundError(f"{where}.paths: nothing matches {pattern!r}")
        out += hits
    return out


def _image_size(data: bytes, path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:  # Pillow raises many types for a file that is not an image
        raise ValueError(f"{path}: not a readable image") from None


def clip_box(
    box: list[float], width: int, height: int, path, line: int, bad: BadRows, problems: list
) -> list[float] | None:
    """[x, y, w, h] inside the image: a box reaching outside is clipped (and noted in
    `problems`), one with no area left or a non-positive size is skipped (counted in `bad`)."""
    x, y, w, h = (float(v) for v in box)
    if w <= 0 or h <= 0:
        bad.skip(path, line, "box with a zero or negative size", f"bbox {box}")
        return None
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(float(width), x + w), min(float(height), y + h)
    if x2 - x1 < 1 or y2 - y1 < 1:
        bad.skip(path, line, "box outside the image", f"bbox {box} in {width}x{height}")
        return None
    if (x1, y1, x2, y2) != (x, y, x + w, y + h):
        problems.append(f"{path}:{line}: box {box} clipped to the {width}x{height} image")
    bad.ok()
    return [x1, y1, x2 - x1, y2 - y1]


def coco_files(
    patterns: list[str], image_dir: str, where: str, bad: BadRows, problems: list
) -> Iterator[dict]:
    """Images and boxes from COCO JSON files (see the module docstring)."""
    for path in _files(patterns, where, "COCO JSON files"):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        for key in ("images", "annotations", "categories"):
            if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
                raise ValueError(f"{path}: no list {key!r}; a COCO file has images, annotations "
                                 "and categories")  # fmt: skip
        names = {c.get("id"): str(c.get("name", c.get("id"))) for c in doc["categories"]}
        per_image: dict = {im.get("id"): [] for im in doc["images"]}
        for n, ann in enumerate(doc["annotations"]):
            where_ann = f"annotations[{n}]"
            if ann.get("image_id") not in per_image:
                bad.skip(path, n, "annotation for an unknown image", f"{where_ann}.image_id "
                         f"{ann.get('image_id')!r}")  # fmt: skip
            elif ann.get("category_id") not in names:
                bad.skip(path, n, "annotation with an unknown category", f"{where_ann}."
                         f"category_id {ann.get('category_id')!r}")  # fmt: skip
            elif not (isinstance(ann.get("bbox"), list) and len(ann["bbox"]) == 4):
                bad.skip(path, n, "annotation without a 4-number bbox", f"{where_ann}.bbox")
            else:
                per_image[ann["image_id"]].append((n, ann))
        folder = Path(image_dir) if image_dir else path.parent
        for im in doc["images"]:
            file = folder / str(im.get("file_name", ""))
            if not file.is_file():
                bad.skip(path, 0, "image file missing", f"{file} (image id {im.get('id')!r})")
                continue
            data = file.read_bytes()
            width, height = _image_size(data, file)
            boxes = []
            for n, ann in per_image[im.get("id")]:
                box = clip_box(ann["bbox"], width, height, path, n, bad, problems)
                if box is not None:
                    boxes.append({"bbox": box, "label": names[ann["category_id"]]})
            yield _record(str(file), data, boxes, width, height, str(path))


def _record(id_: str, data: bytes, boxes: list, width: int, height: int, source: str) -> dict:
    return {"id": id_, "image": data, "boxes": json.dumps(boxes), "width": width,
            "height": height, "source": source, "split": None}  # fmt: skip


def _label_file(image: Path) -> Path:
    beside = image.with_suffix(".txt")
    parts = list(image.parts)
    if beside.is_file() or "images" not in parts:
        return beside
    i = len(parts) - 1 - parts[::-1].index("images")  # the last images/ folder
    return Path(*parts[:i], "labels", *parts[i + 1 :]).with_suffix(".txt")


def _class_names(label_file: Path, image: Path) -> list[str] | None:
    for folder in (label_file.parent, image.parent, label_file.parent.parent):
        f = folder / "classes.txt"
        if f.is_file():
            return [s.strip() for s in f.read_text(encoding="utf-8").splitlines() if s.strip()]
    return None


def yolo_folders(patterns: list[str], where: str, bad: BadRows, problems: list) -> Iterator[dict]:
    """Images and boxes from YOLO txt labels (see the module docstring)."""
    images = [p for p in _files(patterns, where, "image folders") if p.suffix.lower()
              in IMAGE_SUFFIXES]  # fmt: skip
    for image in images:
        data = image.read_bytes()
        width, height = _image_size(data, image)
        labels = _label_file(image)
        names = _class_names(labels, image)
        boxes = []
        lines = labels.read_text(encoding="utf-8").splitlines() if labels.is_file() else []
        for n, line in enumerate(lines, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 5:
                bad.skip(labels, n, "YOLO line without 5 fields", f"{len(fields)} fields")
                continue
            try:
                cls, cx, cy, w, h = int(fields[0]), *(float(v) for v in fields[1:])
            except ValueError:
                bad.skip(labels, n, "YOLO line with a field that is not a number", line.strip())
                continue
            if cls < 0 or (names is not None and cls >= len(names)):
                bad.skip(labels, n, "YOLO class without a name", f"class {cls}, "
                         f"{len(names or [])} names in classes.txt")  # fmt: skip
                continue
            box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
            box = clip_box(box, width, height, labels, n, bad, problems)
            if box is not None:
                boxes.append({"bbox": box, "label": names[cls] if names else str(cls)})
        yield _record(str(image), data, boxes, width, height, str(labels))


_BAD_ROWS = Field(
    0.01,
    ge=0,
    description="boxes and label lines that cannot be used are skipped and counted; the stage "
    "stops above this many (a fraction of those read when < 1)",
)


class DigitScenesSource(Source):
    """Built-in detection scenes: 2-5 scikit-learn digits per 64x64 canvas, boxes recorded."""

    kind: ClassVar[str] = "detection"
    type: Literal["digit_scenes"] = "digit_scenes"

    def read(self, where, problems, run_dir, bad):
        return digit_scenes(count=self.limit or SCENES)


class CocoSource(Paths, Source):
    """COCO JSON files (images, annotations with bbox [x, y, w, h], categories)."""

    kind: ClassVar[str] = "detection"
    type: Literal["coco"] = "coco"
    image_dir: str = Field(
        "", description="folder the images' file_name is relative to; '' = the JSON's folder"
    )
    max_bad_rows: float = _BAD_ROWS

    def read(self, where, problems, run_dir, bad):
        return coco_files(self.paths, self.image_dir, where, bad, problems)


class YoloSource(Paths, Source):
    """Image folders with YOLO txt labels (class cx cy w h, normalised)."""

    kind: ClassVar[str] = "detection"
    type: Literal["yolo"] = "yolo"
    max_bad_rows: float = _BAD_ROWS

    def read(self, where, problems, run_dir, bad):
        return yolo_folders(self.paths, where, bad, problems)
