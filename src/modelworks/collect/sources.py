"""Document sources. Each yields dicts with `id`, `text`, `source`."""

from __future__ import annotations

import ast
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

from modelworks.collect.source import Paths, Source

# Parts of the stdlib that are tests, demos or vendored: not documentation.
_SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "turtledemo", "__pycache__"}


def python_docs() -> Iterator[dict]:
    """Python's own documentation (`pydoc_data.topics`), then the stdlib's docstrings.

    The stdlib is read with `ast`, never imported, so no module's import side effects run.
    One document per help topic and one per module (its docstrings, each under its name).
    """
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data; the docstrings still serve
        topics = {}
    for name in sorted(topics):
        yield {"id": f"pydoc:{name}", "text": topics[name], "source": "pydoc_data.topics"}
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP_DIRS.intersection(rel.parts):
            continue
        text = _module_docstrings(path, ".".join(rel.with_suffix("").parts))
        if text:
            module = ".".join(rel.with_suffix("").parts)
            yield {
                "id": f"stdlib:{module}",
                "text": text,
                "source": f"python{sys.version_info[0]}.{sys.version_info[1]} stdlib",
            }


def _module_docstrings(path: Path, module: str) -> str:
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return ""
    parts = []
    stack: list[tuple[ast.AST, str]] = [(tree, module)]
    while stack:
        node, qual = stack.pop(0)
        doc = ast.get_docstring(node)
        if doc:
            parts.append(f"{qual}\n\n{doc}")
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                stack.append((child, f"{qual}.{child.name}"))
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Image sources: each yields {"id", "image" (encoded bytes), "label", "source"}.

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _png(pixels) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def sklearn_digits() -> Iterator[dict]:
    """scikit-learn's bundled 1,797 8x8 handwritten digits (UCI), as 8-bit grayscale PNGs."""
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    for i, (img, label) in enumerate(zip(data.images, data.target, strict=True)):
        pixels = np.round(img * (255 / 16)).astype(np.uint8)  # sklearn's values are 0..16
        yield {
            "id": f"digits:{i}",
            "image": _png(pixels),
            "label": str(int(label)),
            "source": "sklearn.datasets.load_digits",
        }


def image_folder(roots: list[str], where: str) -> Iterator[dict]:
    """`root/<class name>/<image file>`: one example per file, labelled by its folder."""
    if not roots:
        raise FileNotFoundError(f"{where}.paths: empty; give the folder holding class folders")
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(f"{where}.paths: {root} is not a folder")
        classes = sorted(p for p in root.iterdir() if p.is_dir())
        if not classes:
            raise FileNotFoundError(f"{where}.paths: {root} has no class sub-folders")
        for class_dir in classes:
            for f in sorted(class_dir.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    yield {
                        "id": str(f),
                        "image": f.read_bytes(),
                        "label": class_dir.name,
                        "source": str(root),
                    }


def idx_files(paths: list[str], where: str) -> Iterator[dict]:
    """MNIST-style IDX files (optionally .gz): paths = [images file, labels file]."""
    import gzip

    import numpy as np

    if len(paths) != 2:
        raise FileNotFoundError(f"{where}.paths: give [images.idx, labels.idx] for type idx")

    def read(path: str) -> np.ndarray:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{where}.paths: {p} does not exist")
        try:
            raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        except (OSError, EOFError) as e:
            raise ValueError(f"{p}: cannot decompress ({e})") from None
        if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
            raise ValueError(f"{p}: not an unsigned-byte IDX file")
        ndim = raw[3]
        dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        if data.size != int(np.prod(dims)):
            raise ValueError(f"{p}: truncated IDX file ({data.size} of {np.prod(dims)} values)")
        return data.reshape(dims)

    images, labels = read(paths[0]), read(paths[1])
    if len(images) != len(labels):
        raise ValueError(f"{where}: {len(images)} images but {len(labels)} labels")
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        yield {
            "id": f"{paths[0]}:{i}",
            "image": _png(img),
            "label": str(int(label)),
            "source": paths[0],
        }


class PythonDocsSource(Source):
    """Python's own documentation (pydoc topics) and the stdlib's docstrings."""

    type: Literal["python_docs"] = "python_docs"

    def read(self, where, problems, run_dir, bad):
        return python_docs()


class DigitsSource(Source):
    """scikit-learn's 8x8 handwritten digits, as images."""

    kind: ClassVar[str] = "image"
    type: Literal["sklearn_digits"] = "sklearn_digits"

    def read(self, where, problems, run_dir, bad):
        return sklearn_digits()


class ImageFolderSource(Paths, Source):
    """Images in root/<class>/<image>."""

    kind: ClassVar[str] = "image"
    type: Literal["image_folder"] = "image_folder"

    def read(self, where, problems, run_dir, bad):
        return image_folder(self.paths, where)


class IdxSource(Paths, Source):
    """MNIST-style IDX files: `paths: [images, labels]`."""

    kind: ClassVar[str] = "image"
    type: Literal["idx"] = "idx"

    def read(self, where, problems, run_dir, bad):
        return idx_files(self.paths, where)
