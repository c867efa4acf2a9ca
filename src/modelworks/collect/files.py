"""Local files and folders by glob: .txt .md .html/.htm .jsonl .csv .parquet .warc(.gz),
plain or gzip-compressed (.txt.gz, .jsonl.gz, ...).

Every document carries `source` (the file), `url` (the record's `url` field, or the file path)
and `metadata` (JSON: the record's other fields, the line or row number). A problem local to one
file or record (undecodable bytes, a bad JSON line, a CSV without the named column, HTML without
text, a truncated gzip) is appended to `problems` and skipped: the rest of the corpus is still read.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field

from modelworks.collect.html import extract_html
from modelworks.collect.rows import BadRows, delimited
from modelworks.collect.source import Paths, RowPolicy, Source, SplitField

SUFFIXES = {".txt", ".md", ".html", ".htm", ".jsonl", ".csv", ".parquet", ".warc"}


def _kind(path: Path) -> str:
    """The format's suffix, looking through a trailing .gz."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def expand(patterns: list[str], where: str) -> list[Path]:
    """Files named by globs, files or folders (folders: every supported file below them)."""
    if not patterns:
        raise FileNotFoundError(f"{where}.paths: empty; give at least one file, glob or folder")
    out: list[Path] = []
    for pattern in patterns:
        hits = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
        found = []
        for h in hits:
            if h.is_dir():
                found += sorted(f for f in h.rglob("*") if f.is_file() and _kind(f) in SUFFIXES)
            elif h.is_file():
                found.append(h)
        if not found:
            raise FileNotFoundError(f"{where}.paths: no file matches {pattern!r}")
        out.extend(found)
    return out


def _raw(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix.lower() == ".gz":
        try:
            return gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as e:
            # a truncated gzip still yields what was compressed before the cut
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            partial = d.decompress(data)
            raise _Truncated(partial, f"{path}: truncated or corrupt gzip ({e})") from None
    return data


class _Truncated(Exception):
    def __init__(self, partial: bytes, message: str) -> None:
        super().__init__(message)
        self.partial = partial


def _decode(data: bytes, where: str, problems: list[str]) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        problems.append(f"{where}: undecodable bytes at offset {e.start} (not UTF-8); skipped")
        return None


def _doc(
    doc_id: str, text: str, path: Path, url: str | None = None, meta: dict | None = None
) -> dict:
    return {
        "id": doc_id,
        "text": text,
        "source": str(path),
        "url": url or str(path),
        "metadata": json.dumps(meta, ensure_ascii=False, default=str) if meta else None,
    }


def read_files(
    patterns: list[str],
    text_field: str,
    where: str,
    problems: list[str],
    quoting: str = "auto",
    bad: BadRows | None = None,
) -> Iterator[dict]:
    """Documents of every file; rows of CSV files follow the bad-row policy (collect/rows.py)
    through `bad` (without one, the default `max_bad_rows` is checked at the end)."""
    own = bad is None
    bad = BadRows(where) if bad is None else bad
    for path in expand(patterns, where):
        kind = _kind(path)
        if kind == ".warc":
            from modelworks.collect.warc import read_warc

            yield from read_warc(path, problems)
            continue
        if kind == ".parquet":
            yield from _parquet(path, text_field, problems)
            continue
        try:
            data = _raw(path)
        except _Truncated as t:
            problems.append(f"{t}; kept what was readable")
            data = t.partial
        if kind == ".jsonl":
            yield from _jsonl(path, data, text_field, problems)
        elif kind == ".csv":
            yield from _csv(path, data, text_field, problems, quoting, bad)
        elif kind in (".html", ".htm"):
            html = _decode(data, str(path), problems)
            if html is None:
                continue
            text = extract_html(html)
            if text is None:
                problems.append(f"{path}: HTML without main text; skipped")
                continue
            yield _doc(str(path), text, path)
        elif kind in (".txt", ".md", ""):
            text = _decode(data, str(path), problems)
            if text is not None:
                yield _doc(str(path), text, path)
        else:
            raise ValueError(
                f"{where}.paths: {path}: unsupported file type {kind!r} "
                "(txt, md, html, jsonl, csv, parquet, warc; optionally .gz)"
            )
    if own:
        bad.check()


def _jsonl(path: Path, data: bytes, text_field: str, problems: list[str]) -> Iterator[dict]:
    for n, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        line = _decode(raw, f"{path}:{n}", problems)
        if line is None:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{n}: not valid JSON ({e.msg}); skipped")
            continue
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            problems.append(f"{path}:{n}: no string field {text_field!r}; skipped")
            continue
        text = record.pop(text_field)
        doc_id = str(record.pop("id", f"{path}:{n}"))
        url = record.pop("url", None)
        yield _doc(doc_id, text, path, url if isinstance(url, str) else None, {"line": n, **record})


def _csv(
    path: Path, data: bytes, column: str, problems: list[str], quoting: str, bad: BadRows
) -> Iterator[dict]:
    text = _decode(data, str(path), problems)
    if text is None:
        return
    text = text.removeprefix("\ufeff")  # a byte-order mark is not part of the first name
    names, rows = delimited(io.StringIO(text, newline=""), path, [], quoting, bad)
    if column not in names:
        problems.append(f"{path}: no column {column!r} (columns: {', '.join(names) or 'none'}); "
                        "file skipped")  # fmt: skip
        return
    for n, row in rows:
        bad.ok()
        value = row.pop(column)
        if not value:
            continue
        doc_id = row.pop("id", None) or f"{path}:{n}"
        url = row.pop("url", None)
        yield _doc(doc_id, value, path, url, {"line": n, **row})


def read_table_column(path: Path, column: str, quoting: str = "auto") -> Iterator[str]:
    """A text column of a .parquet or .csv file (for eval sets); raises when it is missing, and
    under the bad-row policy (collect/rows.py) when too many rows are unreadable."""
    problems: list[str] = []
    bad = BadRows(str(path), max_bad_rows=0, knob=None)  # an eval set: every row or an error
    if _kind(path) == ".parquet":
        docs = _parquet(path, column, problems)
    else:
        docs = _csv(path, _raw(path), column, problems, quoting, bad)
    for doc in docs:
        yield doc["text"]
    if problems:
        raise ValueError(problems[0])
    bad.check()


def _parquet(path: Path, column: str, problems: list[str]) -> Iterator[dict]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        problems.append(f"{path}: not a readable Parquet file ({e}); skipped")
        return
    names = pf.schema_arrow.names
    if column not in names:
        problems.append(f"{path}: no column {column!r} (columns: {', '.join(names)}); skipped")
        return
    n = 0
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            value = row.pop(column)
            if not isinstance(value, str) or not value:
                continue
            doc_id = str(row.pop("id", None) or f"{path}:{n}")
            url = row.pop("url", None)
            yield _doc(
                doc_id, value, path, url if isinstance(url, str) else None, {"row": n, **row}
            )


class FilesSource(Paths, RowPolicy, SplitField, Source):
    """Local txt/md/html/jsonl/csv/parquet/warc files, globs or folders (.gz too)."""

    type: Literal["files"] = "files"
    text_field: str = Field("text", description="field holding the text in jsonl/csv/parquet files")

    def read(self, where, problems, run_dir, bad):
        return read_files(self.paths, self.text_field, where, problems, self.quoting, bad)


class WarcSource(Paths, Source):
    """WARC / WARC.gz files: each HTML response's main text."""

    type: Literal["warc"] = "warc"

    def read(self, where, problems, run_dir, bad):
        return read_files(self.paths, "text", where, problems, "auto", bad)
