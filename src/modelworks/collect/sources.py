"""Document sources. Each yields dicts with `id`, `text`, `source`."""

from __future__ import annotations

import ast
import glob
import json
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

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


def files(patterns: list[str], text_field: str, where: str) -> Iterator[dict]:
    """Local .txt/.md files (one document each) and .jsonl files (one per line)."""
    if not patterns:
        raise FileNotFoundError(f"{where}.paths: empty; give at least one file or glob")
    matched: list[Path] = []
    for pattern in patterns:
        hits = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
        hits = [h for h in hits if h.is_file()]
        if not hits:
            raise FileNotFoundError(f"{where}.paths: no file matches {pattern!r}")
        matched.extend(hits)
    for path in matched:
        if path.suffix == ".jsonl":
            yield from _jsonl(path, text_field)
        elif path.suffix in (".txt", ".md", ""):
            yield {"id": str(path), "text": _read_text(path), "source": str(path)}
        else:
            raise ValueError(f"{path}: unsupported file type {path.suffix!r} (txt, md, jsonl)")


def _read_text(path: Path) -> str:
    # undecodable bytes become U+FFFD rather than failing the whole collection
    return path.read_bytes().decode("utf-8", errors="replace")


def _jsonl(path: Path, text_field: str) -> Iterator[dict]:
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise ValueError(f"{path}:{n}: no string field {text_field!r}")
        doc_id = str(record.get("id", f"{path}:{n}"))
        yield {"id": doc_id, "text": record[text_field], "source": str(path)}
