"""collect: gather documents from the configured sources into `documents.parquet`.

modelworks collect configs/quickstart.yaml
"""

from __future__ import annotations

import itertools

import pyarrow as pa
import pyarrow.parquet as pq

from modelworks.collect import sources
from modelworks.config import Config
from modelworks.errors import ModelworksError
from modelworks.progress import Reporter

SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string())])


class CollectError(ModelworksError, RuntimeError):
    pass


def _iter_source(src, where: str):
    if src.type == "python_docs":
        docs = sources.python_docs()
    else:
        docs = sources.files(src.paths, src.text_field, where)
    return itertools.islice(docs, src.limit) if src.limit else docs


def collect(cfg: Config, reporter: Reporter | None = None) -> dict:
    """Read every source, write `<run>/collect/documents.parquet`; returns the manifest."""
    from modelworks.pipeline import stage_writer

    reporter = reporter or Reporter()
    writer = stage_writer(cfg, "collect")
    writer.open()
    counts: dict[str, int] = {}
    n_chars = 0
    try:
        with pq.ParquetWriter(writer.dir / "documents.parquet", SCHEMA) as out:
            for i, src in enumerate(cfg.collect.sources):
                where = f"collect.sources.{i}"
                batch: list[dict] = []
                try:
                    for doc in _iter_source(src, where):
                        batch.append(doc)
                        n_chars += len(doc["text"])
                        if len(batch) == 512:
                            out.write_table(pa.Table.from_pylist(batch, SCHEMA))
                            counts[where] = counts.get(where, 0) + len(batch)
                            batch = []
                except (FileNotFoundError, ValueError) as e:
                    raise CollectError(str(e)) from None
                if batch:
                    out.write_table(pa.Table.from_pylist(batch, SCHEMA))
                counts[where] = counts.get(where, 0) + len(batch)
                reporter.info(f"[collect] {where} ({src.type}): {counts[where]} documents")
        total = sum(counts.values())
        if total == 0:
            raise CollectError("collect: the sources yielded no documents; check collect.sources")
    except BaseException:
        writer.discard()
        raise
    writer.summary = {"documents": total, "chars": n_chars, "per_source": counts}
    reporter.info(f"[collect] {total} documents, {n_chars / 1e6:.2f} M characters")
    return writer.commit()
