"""collect: gather raw data from the configured sources into one Parquet file.

    modelworks collect configs/quickstart.yaml

Text sources write `<run>/collect/documents.parquet` (id, text, source); image sources write
`<run>/collect/images.parquet` (id, image bytes, label, source); labelled tables write
`documents.parquet` with a `label` column; interaction sources (recommendation) write
`interactions.parquet` (user, item, timestamp, rating, source); chat sources write
`chats.parquet` (id, messages as JSON, source, split, topic). One run collects one kind.

Rows a table reader cannot use are skipped under one policy (collect/rows.py): counted per reason
with their first `file:line`s in the manifest's summary (`bad_rows`) and the report; past a
source's `max_bad_rows` the stage stops with every reason in one line.
"""

from __future__ import annotations

import itertools

import pyarrow as pa
import pyarrow.parquet as pq

from modelworks.collect import (
    chat,
    detection,
    files,
    image_sources,
    interactions,
    parallel,
    python_qa,
    rows,
    sources,
    tables,
)
from modelworks.collect.splits import split_counts, with_splits
from modelworks.config import Config
from modelworks.errors import CollectError
from modelworks.progress import Reporter

TEXT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("metadata", pa.string()),
        ("split", pa.string()),
    ]
)  # fmt: skip  (url: the page or file; metadata: JSON of the record's other fields)
IMAGE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.binary()),
        ("label", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),
    ]
)  # fmt: skip  (split: train/val/test as the source named it, else empty; see splits.py)
IMAGE_TYPES = {"sklearn_digits", "image_folder", "idx", "image_table", "npz"}
TABLE_SCHEMA = pa.schema(
    [("id", pa.string()), ("text", pa.string()), ("label", pa.string()), ("source", pa.string()),
     ("split", pa.string())]
)  # fmt: skip
PARALLEL_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("target", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),
    ]
)  # fmt: skip  (text: the sentence to translate; target: its translation)
DETECTION_TYPES = {"digit_scenes", "coco", "yolo"}
DETECTION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.binary()),
        ("boxes", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("source", pa.string()),
        ("split", pa.string()),
    ]
)  # fmt: skip  (boxes: JSON [{"bbox": [x, y, w, h], "label"}], collect/detection.py)
INTERACTION_TYPES = {"interactions", "stdlib_calls", "stdlib_imports"}
CHAT_TYPES = {"chat", "synthetic_chat", "python_qa"}
CHAT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("messages", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),
        ("topic", pa.string()),
    ]
)  # fmt: skip  messages: the conversation as JSON, [{"role", "content"}, ...] (collect/chat.py)
INTERACTION_SCHEMA = pa.schema(
    [("user", pa.string()), ("item", pa.string()), ("timestamp", pa.float64()),
     ("rating", pa.float64()), ("source", pa.string())]
)  # fmt: skip


def _iter_source(src, where: str, problems: list[str] | None = None, run_dir=None, bad=None):
    problems = [] if problems is None else problems
    bad = rows.BadRows(where, src.max_bad_rows) if bad is None else bad
    q = src.quoting
    docs = {
        "python_docs": lambda: sources.python_docs(),
        "files": lambda: files.read_files(src.paths, src.text_field, where, problems, q, bad),
        "warc": lambda: files.read_files(src.paths, src.text_field, where, problems, q, bad),
        "crawl": lambda: _crawl(src, where, problems, run_dir),
        "hf": lambda: _hf(src, where),
        "sklearn_digits": lambda: sources.sklearn_digits(),
        "image_folder": lambda: sources.image_folder(src.paths, where),
        "idx": lambda: sources.idx_files(src.paths, where),
        "image_table": lambda: image_sources.image_table(
            src.paths, src.path_field, src.label_field, where, q, bad, src.split_field
        ),
        "npz": lambda: image_sources.npz_arrays(src.paths, src.array_keys, where),
        "table": lambda: (
            _hf(src, where, src.label_field, bad)
            if src.dataset
            else tables.read_tables(
                src.paths,
                src.text_field,
                src.label_field,
                src.columns,
                where,
                q,
                bad,
                src.split_field,
            )
        ),
        "interactions": lambda: interactions.read_interactions(
            src.paths,
            src.user_field,
            src.item_field,
            src.time_field,
            src.rating_field,
            where,
            src.columns,
            q,
            bad,
        ),  # fmt: skip
        "parallel": lambda: parallel.read_parallel(
            src.paths,
            src.source_field,
            src.target_field,
            src.columns,
            where,
            src.dataset,
            q,
            bad,
            src.split_field,
        ),
        "stdlib_calls": lambda: interactions.stdlib_calls(),
        "stdlib_imports": lambda: interactions.stdlib_imports(),
        "chat": lambda: chat.read_chats(src.paths, where, src.split_field),
        "synthetic_chat": lambda: chat.synthetic_chats(src.limit),
        "python_qa": lambda: python_qa.python_qa(),
        "digit_scenes": lambda: detection.digit_scenes(count=src.limit or detection.SCENES),
        "coco": lambda: detection.coco_files(src.paths, src.image_dir, where, bad, problems),
        "yolo": lambda: detection.yolo_folders(src.paths, where, bad, problems),
    }[src.type]()
    docs = itertools.islice(docs, src.limit) if src.limit else docs
    return with_splits(docs, src, where, INTERACTION_TYPES)


def _crawl(src, where: str, problems: list[str], run_dir):
    from pathlib import Path

    from modelworks.collect.crawl import CrawlSettings, crawl

    index = where.rsplit(".", 1)[-1]
    state = Path(src.state_dir) if src.state_dir else Path(run_dir) / "crawl_state" / index
    settings = CrawlSettings(
        seeds=src.urls, state_dir=state, allow_domains=src.allow_domains,
        max_pages=src.max_pages, max_depth=src.max_depth, delay_s=src.delay_s,
        user_agent=src.user_agent, timeout_s=src.timeout_s, retries=src.retries,
        backoff_s=src.backoff_s, max_bytes=src.max_bytes,
    )  # fmt: skip
    try:
        yield from crawl(settings, problems)
    except ValueError as e:
        raise ValueError(f"{where}.{e}") from None


def _hf(src, where: str, label_field: str | None = None, bad: rows.BadRows | None = None):
    from modelworks.collect.hf import read_hf

    if not src.dataset:
        raise ValueError(f"{where}.dataset: empty; give a dataset folder, data file or Hub name")
    return read_hf(
        src.dataset,
        src.split or "train",
        src.text_field,
        src.streaming,
        src.subset,
        where,
        label_field,
        bad,
    )


def collect(cfg: Config, reporter: Reporter | None = None) -> dict:
    """Read every source and write the collection; returns the manifest."""
    from modelworks.lifecycle import stage_writer

    reporter = reporter or Reporter()
    kinds = {
        "interactions"
        if s.type in INTERACTION_TYPES
        else "image"
        if s.type in IMAGE_TYPES
        else "table"
        if s.type == "table"
        else "chat"
        if s.type in CHAT_TYPES
        else "detection"
        if s.type in DETECTION_TYPES
        else "parallel"
        if s.type == "parallel"
        else "text"
        for s in cfg.collect.sources
    }
    if len(kinds) != 1:
        raise CollectError(
            "collect.sources mixes text, labelled-table, image and interaction sources; "
            "use one kind per run"
        )
    kind = kinds.pop()
    schema, name = {
        "image": (IMAGE_SCHEMA, "images"),
        "table": (TABLE_SCHEMA, "documents"),
        "parallel": (PARALLEL_SCHEMA, "documents"),
        "text": (TEXT_SCHEMA, "documents"),
        "interactions": (INTERACTION_SCHEMA, "interactions"),
        "chat": (CHAT_SCHEMA, "chats"),
        "detection": (DETECTION_SCHEMA, "detection_images"),
    }[kind]
    writer = stage_writer(cfg, "collect")
    writer.open()
    counts: dict[str, int] = {}
    problems: dict[str, list[str]] = {}
    bad: dict[str, rows.BadRows] = {}
    try:
        with pq.ParquetWriter(writer.dir / f"{name}.parquet", schema) as out:
            for i, src in enumerate(cfg.collect.sources):
                where = f"collect.sources.{i}"
                counts[where] = 0
                bad[where] = rows.BadRows(where, src.max_bad_rows)
                try:
                    found = problems.setdefault(where, [])
                    docs = _iter_source(src, where, found, cfg.run_dir, bad[where])
                    for batch in _batched(docs, 512):
                        out.write_table(pa.Table.from_pylist(batch, schema))
                        counts[where] += len(batch)
                    bad[where].check()
                except (FileNotFoundError, ValueError, OSError, ImportError) as e:
                    raise CollectError(str(e)) from None
                reporter.info(f"[collect] {where} ({src.type}): {counts[where]} {name}")
                if bad[where].bad:
                    reporter.info(
                        f"[collect] {where}: skipped {bad[where].bad} bad row(s): "
                        f"{bad[where].describe()}"
                    )
                for msg in problems[where][:5]:
                    reporter.info(f"[collect] {where} skipped: {msg}")
                if len(problems[where]) > 5:
                    reporter.info(f"[collect] {where}: {len(problems[where]) - 5} more problems")
        total = sum(counts.values())
        if total == 0:
            first = next((f"; first problem: {p[0]}" for p in problems.values() if p), "")
            raise CollectError(
                f"collect: the sources yielded nothing; check collect.sources{first}"
            )
    except BaseException:
        writer.discard()
        raise
    writer.summary = {name: total, "per_source": counts}
    if kind != "interactions":
        writer.summary["splits"] = split_counts(writer.dir / f"{name}.parquet")
    if any(problems.values()):  # the first 50 per source; the count is exact
        writer.summary["problems"] = {
            w: {"count": len(p), "first": p[:50]} for w, p in problems.items() if p
        }
    if any(b.bad for b in bad.values()):  # counts per reason, the first few file:line each
        writer.summary["bad_rows"] = {w: b.summary() for w, b in bad.items() if b.bad}
    reporter.info(f"[collect] {total} {name}")
    return writer.commit()


def _batched(items, n: int):
    it = iter(items)
    while batch := list(itertools.islice(it, n)):
        yield batch
