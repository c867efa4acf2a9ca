"""collect: gather raw data from the configured sources into one Parquet file.

    modelworks collect configs/quickstart.yaml

Text sources write `<run>/collect/documents.parquet` (id, text, source); image sources write
`<run>/collect/images.parquet` (id, image bytes, label, source). One run collects one kind.
"""

from __future__ import annotations

import itertools

import pyarrow as pa
import pyarrow.parquet as pq

from modelworks.collect import sources
from modelworks.config import Config
from modelworks.errors import ModelworksError
from modelworks.progress import Reporter

TEXT_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string())])
IMAGE_SCHEMA = pa.schema(
    [("id", pa.string()), ("image", pa.binary()), ("label", pa.string()), ("source", pa.string())]
)
IMAGE_TYPES = {"sklearn_digits", "image_folder", "idx"}


class CollectError(ModelworksError, RuntimeError):
    pass


def _iter_source(src, where: str):
    docs = {
        "python_docs": lambda: sources.python_docs(),
        "files": lambda: sources.files(src.paths, src.text_field, where),
        "sklearn_digits": lambda: sources.sklearn_digits(),
        "image_folder": lambda: sources.image_folder(src.paths, where),
        "idx": lambda: sources.idx_files(src.paths, where),
    }[src.type]()
    return itertools.islice(docs, src.limit) if src.limit else docs


def collect(cfg: Config, reporter: Reporter | None = None) -> dict:
    """Read every source and write the collection; returns the manifest."""
    from modelworks.pipeline import stage_writer

    reporter = reporter or Reporter()
    kinds = {"image" if s.type in IMAGE_TYPES else "text" for s in cfg.collect.sources}
    if len(kinds) != 1:
        raise CollectError("collect.sources mixes text and image sources; use one kind per run")
    kind = kinds.pop()
    schema, name = (IMAGE_SCHEMA, "images") if kind == "image" else (TEXT_SCHEMA, "documents")
    writer = stage_writer(cfg, "collect")
    writer.open()
    counts: dict[str, int] = {}
    try:
        with pq.ParquetWriter(writer.dir / f"{name}.parquet", schema) as out:
            for i, src in enumerate(cfg.collect.sources):
                where = f"collect.sources.{i}"
                counts[where] = 0
                try:
                    for batch in _batched(_iter_source(src, where), 512):
                        out.write_table(pa.Table.from_pylist(batch, schema))
                        counts[where] += len(batch)
                except (FileNotFoundError, ValueError, OSError) as e:
                    raise CollectError(str(e)) from None
                reporter.info(f"[collect] {where} ({src.type}): {counts[where]} {name}")
        total = sum(counts.values())
        if total == 0:
            raise CollectError("collect: the sources yielded nothing; check collect.sources")
    except BaseException:
        writer.discard()
        raise
    writer.summary = {name: total, "per_source": counts}
    reporter.info(f"[collect] {total} {name}")
    return writer.commit()


def _batched(items, n: int):
    it = iter(items)
    while batch := list(itertools.islice(it, n)):
        yield batch
