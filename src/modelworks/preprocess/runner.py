"""The configurable step list: names -> step classes, validation of `preprocess.steps`, and a
streaming runner that sends removed documents to `rejected/`.

    preprocess:
      steps:
        - fix_mojibake
        - {step: normalize, form: NFC}
        - whitespace
        - {step: gopher_quality, min_doc_words: 50}
        - {step: minhash_dedup, threshold: 0.8}

A step is a name, or a mapping with `step:` and the step's parameters (the keyword arguments of its
class, validated with their type hints). Steps run as chained generators, so memory stays flat;
a step with `needs_pass` (near-dedup) makes the runner spill the documents reaching it to a
temporary Parquet file, give the step one pass over it, then stream on from that file.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ConfigDict, ValidationError, create_model

from modelworks.preprocess import steps as base


def _registry() -> dict[str, type[base.Step]]:
    # late imports: only what a config names gets imported (langid loads a model, etc.)
    from modelworks.preprocess.decontaminate import Decontaminate
    from modelworks.preprocess.langid import LanguageFilter
    from modelworks.preprocess.minhash import MinHashDedup
    from modelworks.preprocess.pii import RedactPII
    from modelworks.preprocess.quality import (
        C4Quality,
        FineWebQuality,
        GopherQuality,
        GopherRepetition,
    )

    classes = [
        base.Normalize,
        base.FixMojibake,
        base.CleanWhitespace,
        base.RemoveBoilerplateLines,
        base.MinLength,
        base.ExactDedup,
        GopherQuality,
        GopherRepetition,
        C4Quality,
        FineWebQuality,
        LanguageFilter,
        MinHashDedup,
        RedactPII,
        Decontaminate,
    ]
    return {c.name: c for c in classes}


def step_names() -> list[str]:
    return sorted(_registry())


def parse_spec(spec: str | dict, where: str) -> tuple[type[base.Step], dict]:
    if isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, dict) and isinstance(spec.get("step"), str):
        params = {k: v for k, v in spec.items() if k != "step"}
        name = spec["step"]
    else:
        raise ValueError(f"{where}: give a step name or a mapping with a 'step:' key")
    registry = _registry()
    if name not in registry:
        raise ValueError(f"{where}: unknown step {name!r}; known: {', '.join(sorted(registry))}")
    cls = registry[name]
    return cls, _validate_params(cls, params, f"{where} ({name})")


def _validate_params(cls: type, params: dict, where: str) -> dict:
    hints = typing.get_type_hints(cls.__init__)
    fields = {}
    for pname, p in inspect.signature(cls.__init__).parameters.items():
        if pname == "self":
            continue
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[pname] = (hints.get(pname, Any), default)
    model = create_model(
        f"{cls.__name__}Params", __config__=ConfigDict(extra="forbid", strict=False), **fields
    )
    try:
        validated = model.model_validate(params)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            known = ", ".join(fields) or "none"
            raise ValueError(f"{where}: unknown parameter {key!r} (parameters: {known})") from None
        raise ValueError(f"{where}.{key}: {err['msg']} (got {err.get('input')!r})") from None
    return {k: getattr(validated, k) for k in params}


def validate_specs(specs: list) -> None:
    """Checks names and parameters without building anything (for config loading)."""
    for i, spec in enumerate(specs):
        parse_spec(spec, f"preprocess.steps.{i}")


def build_steps(specs: list, where: str = "preprocess.steps") -> list[base.Step]:
    out = []
    for i, spec in enumerate(specs):
        cls, params = parse_spec(spec, f"{where}.{i}")
        try:
            out.append(cls(**params))
        except (ValueError, FileNotFoundError, ImportError) as e:
            raise ValueError(f"{where}.{i} ({cls.name}): {e}") from None
    return out


REJECT_SCHEMA = pa.schema(
    [("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("reason", pa.string())]
)


class RejectWriter:
    """Removed documents of one step, with the reason, to `rejected/<NN>_<step>.parquet`."""

    def __init__(self, path: Path) -> None:
        self.path, self._rows, self._writer = path, [], None

    def __call__(self, doc: dict, reason: str) -> None:
        self._rows.append(
            {"id": doc["id"], "text": doc["text"], "source": doc.get("source"), "reason": reason}
        )
        if len(self._rows) >= 1024:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.path, REJECT_SCHEMA)
        self._writer.write_table(pa.Table.from_pylist(self._rows, REJECT_SCHEMA))
        self._rows = []

    def close(self) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.close()


def _spill(docs: Iterable[dict], path: Path) -> None:
    writer, batch, schema = None, [], None
    for doc in docs:
        batch.append(doc)
        if len(batch) == 1024:
            writer, schema = _write(writer, batch, path, schema)
            batch = []
    if batch or writer is None:
        writer, schema = _write(writer, batch, path, schema)
    writer.close()


def _write(writer, batch: list[dict], path: Path, schema):
    if schema is None:
        keys = list(batch[0]) if batch else ["id", "text", "source"]
        schema = pa.schema([(k, pa.string()) for k in keys])
    table = pa.Table.from_pylist(batch, schema)
    if writer is None:
        writer = pq.ParquetWriter(path, schema)
    writer.write_table(table)
    return writer, schema


def _read(path: Path) -> Iterator[dict]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        yield from batch.to_pylist()


def read_shard(path: str, groups: list[int] | None = None) -> Iterator[dict]:
    """One shard's documents: the listed row groups of a Parquet file, or all of it."""
    pf = pq.ParquetFile(path)
    if groups is None:
        for batch in pf.iter_batches(batch_size=1024):
            yield from batch.to_pylist()
    else:
        for g in groups:
            yield from pf.read_row_group(g).to_pylist()


def run_steps(
    steps: list[base.Step],
    source: Callable[[], Iterator[dict]],
    out_dir: Path,
    work_dir: Path | None = None,
    start: int = 0,
) -> Iterator[dict]:
    """Chains the steps over `source()`, yielding the kept documents; filters write what they
    remove to `out_dir/rejected/<NN>_<step>.parquet` (NN counts from `start`). Call
    `finish(steps)` after consuming the iterator."""
    work_dir = work_dir or out_dir / "_work"
    for i, step in enumerate(steps):
        if isinstance(step, base.Filter):
            name = f"{start + i:02d}_{step.name}.parquet"
            step.on_reject = RejectWriter(out_dir / "rejected" / name)
    docs: Iterable[dict] = source()
    for i, step in enumerate(steps):
        if step.needs_pass:
            work_dir.mkdir(parents=True, exist_ok=True)
            spill = work_dir / f"before_{i:02d}_{step.name}.parquet"
            _spill(docs, spill)
            step.prepare(lambda spill=spill: _read(spill))
            docs = _read(spill)
        docs = step.run(docs)
    yield from docs


def finish(steps: list[base.Step], work_dir: Path | None = None) -> list[dict]:
    """Closes reject writers (and mapping files), removes spills; returns the report rows."""
    for step in steps:
        if isinstance(step.on_reject, RejectWriter):
            step.on_reject.close()
        if hasattr(step, "close"):
            step.close()
    if work_dir is not None and work_dir.exists():
        for f in work_dir.iterdir():
            f.unlink()
        work_dir.rmdir()
    return [s.report() for s in steps]
