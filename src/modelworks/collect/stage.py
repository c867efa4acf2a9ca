"""collect: gather raw data from the configured sources into one Parquet file.

    modelworks collect configs/quickstart.yaml

Text sources write `<run>/collect/documents.parquet` (id, text, source); image sources write
`<run>/collect/images.parquet` (id, image bytes, label, source); labelled tables write
`documents.parquet` with a `label` column; interaction sources (recommendation) write
`interactions.parquet` (user, item, timestamp, rating, source); chat sources write
`chats.parquet` (id, messages as JSON, source, split, topic); event sources (user behaviour)
write `events.parquet` column-wise (collect/events_stage.py). One run collects one kind.

Rows a table reader cannot use are skipped under one policy (collect/rows.py): counted per reason
with their first `file:line`s in the manifest's summary (`bad_rows`) and the report; past a
source's `max_bad_rows` the stage stops with every reason in one line.
"""

from __future__ import annotations

import itertools

import pyarrow as pa
import pyarrow.parquet as pq

from modelworks.collect import rows
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
CHAT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("messages", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),
        ("topic", pa.string()),
    ]
)  # fmt: skip  messages: the conversation as JSON, [{"role", "content"}, ...] (collect/chat.py)
PREFERENCE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("answer", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),
        ("topic", pa.string()),
    ]
)  # fmt: skip  prompt: messages as JSON; chosen/rejected: reply texts (collect/preference.py)
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
INTERACTION_SCHEMA = pa.schema(
    [("user", pa.string()), ("item", pa.string()), ("timestamp", pa.float64()),
     ("rating", pa.float64()), ("source", pa.string())]
)  # fmt: skip


def _iter_source(src, where: str, problems: list[str] | None = None, run_dir=None, bad=None):
    problems = [] if problems is None else problems
    bad = rows.BadRows(where, getattr(src, "max_bad_rows", 0.01)) if bad is None else bad
    docs = src.read(where, problems, run_dir, bad)
    docs = itertools.islice(docs, src.limit) if src.limit else docs
    return with_splits(docs, src, where)


def collect(cfg: Config, reporter: Reporter | None = None) -> dict:
    """Read every source and write the collection; returns the manifest."""
    from modelworks.lifecycle import stage_writer
    from modelworks.tasks import stage_options

    reporter = reporter or Reporter()
    if any(s.kind == "events" for s in cfg.collect.sources):  # event logs: column-wise, DuckDB
        from modelworks.collect.events_stage import collect_events

        return collect_events(cfg, reporter)
    kinds = {s.kind for s in cfg.collect.sources}
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
        "preference": (PREFERENCE_SCHEMA, "preferences"),
        "detection": (DETECTION_SCHEMA, "detection_images"),
    }[kind]
    writer = stage_writer(cfg, "collect", stage_options(cfg, "collect"))
    writer.open()
    counts: dict[str, int] = {}
    problems: dict[str, list[str]] = {}
    bad: dict[str, rows.BadRows] = {}
    try:
        with pq.ParquetWriter(writer.dir / f"{name}.parquet", schema) as out:
            for i, src in enumerate(cfg.collect.sources):
                where = f"collect.sources.{i}"
                counts[where] = 0
                bad[where] = rows.BadRows(where, getattr(src, "max_bad_rows", 0.01))
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
