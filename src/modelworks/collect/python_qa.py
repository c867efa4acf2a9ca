"""`python_qa`: question -> answer conversations about Python itself, answered from its own docs.

Three kinds of question, each record tagged with a `topic`:
    builtins   "What does the built-in `len` do?"  -> the first sentence of `len.__doc__`
    keywords   "What is the `while` keyword for?"  -> the first sentence of its `pydoc_data` topic
    <package>  "Which standard library module is described as: ...?" -> the module's name, and
               "What is the `json.decoder` module for?" -> its docstring's first line
Stdlib modules are read with `ast`, never imported (as `python_docs` does), so no import side
effects run; the topic of a module is its top-level package (`email`, `xml`, ...) or `modules`
for a single-file module. Held-out topics (HELD_OUT) get `split: test`, so evaluation measures
answers about areas the model never saw in training; every other record is left for preprocess
to draw train/val from. Answers vary slightly with the Python version.
"""

from __future__ import annotations

import ast
import builtins
import functools
import inspect
import json
import random
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from modelworks.collect.source import Source
from modelworks.collect.sources import _SKIP_DIRS

# Topics whose questions only ever appear in the test split; fixed so runs are comparable.
HELD_OUT = ("keywords", "email", "json", "urllib", "xml", "concurrent")
# Generated codecs, the retired 2to3 and distutils, and IDLE's internals: boilerplate, not docs.
_SKIP_PACKAGES = {"encodings", "lib2to3", "distutils", "idlelib"}
_SENTENCE = re.compile(r"(.+?[.!?])(\s|$)", re.S)


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line ('' when none)."""
    para = " ".join(doc.strip().split("\n\n", 1)[0].split())
    m = _SENTENCE.match(para)
    return (m.group(1) if m else para).strip()


def _builtins() -> Iterator[tuple[str, str, str]]:
    for name in sorted(dir(builtins)):
        obj = getattr(builtins, name)
        if name.startswith("_") or (isinstance(obj, type) and issubclass(obj, BaseException)):
            continue
        if not callable(obj):
            continue
        answer = first_sentence(inspect.getdoc(obj) or "")
        if answer and len(answer) < 160 and not answer.startswith(name + "("):
            yield name, f"What does the built-in `{name}` do?", answer


def _keywords() -> Iterator[tuple[str, str, str]]:
    import pydoc

    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        return
    for word, ref in sorted(pydoc.Helper.keywords.items()):
        key = (ref[0] if isinstance(ref, tuple) else ref).split()[0] if ref else ""
        text = topics.get(key, "")
        # the topic opens with a title underlined by stars; the prose starts after it
        body = re.sub(r"^.*?\n\*+\n", "", text, count=1, flags=re.S)
        # grammar lines (`x_stmt ::= ...`) and version notes answer nothing; a colon ends a lead-in
        paras = [q for q in body.split("\n\n") if q.strip() and "::=" not in q]
        paras = [q for q in paras if not q.strip().startswith(("New in", "Added in", "Changed"))]
        answer = first_sentence(paras[0]).rstrip(":") if paras else ""
        answer = answer if not answer or answer.endswith((".", "?", "!")) else answer + "."
        if answer and len(answer) < 200:
            yield word, f"What is the `{word}` keyword for?", answer


def _modules() -> Iterator[tuple[str, str, str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP_DIRS.intersection(rel.parts) or any(p.startswith("_") for p in rel.parts[:-1]):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not parts or parts[-1].startswith("_") or parts[-1] == "__main__":
            continue
        if parts[0] in _SKIP_PACKAGES:
            continue
        try:
            doc = ast.get_docstring(ast.parse(path.read_bytes()))
        except (SyntaxError, ValueError, OSError):
            continue
        line = " ".join((doc or "").strip().split("\n", 1)[0].split()).rstrip(".")
        name = ".".join(parts)
        if len(line) < 15 or len(line) > 120 or name in line:
            continue
        topic = parts[0] if len(parts) > 1 or (path.name == "__init__.py") else "modules"
        yield topic, name, line, path.name


def python_qa(seed: int = 0, system: str = "") -> Iterator[dict]:
    """Question/answer chat rows (id, messages, source, split, topic), in a seeded shuffled order
    so that a `limit` keeps every topic; each opens with `system` as a system turn if given."""
    items = list(_items())
    random.Random(seed).shuffle(items)
    for topic, key, q, a in items:
        messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        yield {
            "id": f"python_qa:{topic}:{key}",
            "messages": json.dumps(messages, ensure_ascii=False),
            "source": f"python_qa:{topic}",
            "split": "test" if topic in HELD_OUT else None,
            "topic": topic,
        }


@functools.cache  # parsing the stdlib takes seconds; the docs do not change within a process
def _items() -> tuple[tuple[str, str, str, str], ...]:
    items: list[tuple[str, str, str, str]] = []  # topic, key, question, answer
    items += [("builtins", k, q, a) for k, q, a in _builtins()]
    items += [("keywords", k, q, a) for k, q, a in _keywords()]
    seen: set[str] = set()
    for topic, name, line, _ in _modules():
        items.append((topic, name, f"What is the `{name}` module for?", line + "."))
        if line.lower() not in seen:  # a description two modules share has no single answer
            seen.add(line.lower())
            q = f"Which standard library module is described as: {line}?"
            items.append((topic, name + "?", q, name))
    return tuple(items)


class PythonQASource(Source):
    """Built-in Q&A on Python's builtins, keywords and modules, from their docs, split by topic."""

    kind: ClassVar[str] = "chat"
    type: Literal["python_qa"] = "python_qa"
    system: str = Field(
        "",
        description="a system turn opening every conversation: the task's own instruction, so "
        "that its terse answer style binds to it and not to every question",
    )

    def read(self, where, problems, run_dir, bad):
        return python_qa(system=self.system)
