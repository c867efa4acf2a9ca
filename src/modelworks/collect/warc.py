"""WARC / WARC.gz files (Common Crawl style), read with warcio.

`response` records with an HTML body become documents of their main text (trafilatura);
`conversion` records (WET files) are taken as plain text. Each document keeps the target URL and,
in `metadata`, the WARC record id, date and content type. A truncated or corrupt file yields the
records before the damage and a message in `problems`.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from modelworks.collect.html import extract_html


def read_warc(path: Path, problems: list[str]) -> Iterator[dict]:
    try:
        from warcio.archiveiterator import ArchiveIterator
    except ImportError:
        raise ImportError("reading WARC files needs warcio: pip install warcio") from None
    n_records = 0
    size = path.stat().st_size
    with open(path, "rb") as f:
        it = ArchiveIterator(f, check_digests=True)
        try:
            for record in it:
                n_records += 1
                doc = _document(record, path, problems)
                if doc is not None:
                    yield doc
            # warcio stops quietly at a gzip member cut short: look at what it left unread
            end = sum(it.member_info) if getattr(it, "member_info", None) else it.offset
            if size - end > 0:
                f.seek(end)
                tail = f.read()
                if tail.strip():
                    gzip.decompress(tail)  # raises when the member is incomplete
                    raise ValueError(f"{size - end} bytes after the last record")
        except Exception as e:  # warcio raises ArchiveLoadFailed, EOFError, zlib.error...
            problems.append(
                f"{path}: truncated or corrupt WARC after {n_records} records "
                f"({type(e).__name__}: {e}); kept the records before it"
            )


def _document(record, path: Path, problems: list[str]) -> dict | None:
    if record.rec_type not in ("response", "conversion"):
        return None
    url = record.rec_headers.get_header("WARC-Target-URI")
    rec_id = record.rec_headers.get_header("WARC-Record-ID") or f"{path}:{url}"
    body = record.content_stream().read()
    # a record cut short never completes its digest (passed stays None); a wrong one fails
    checker = getattr(record, "digest_checker", None)
    has_digest = record.rec_headers.get_header("WARC-Block-Digest") is not None
    if checker is not None and (checker.passed is False or (has_digest and not checker.passed)):
        problems.append(f"{path}: {url}: truncated or corrupt WARC record (digest); skipped")
        return None
    if record.rec_type == "response":
        ctype = (
            record.http_headers.get_header("Content-Type") if record.http_headers else ""
        ) or ""
        if "html" not in ctype.lower():
            return None
        status = record.http_headers.get_statuscode() if record.http_headers else "200"
        if not str(status).startswith("2"):
            return None
        text = extract_html(body, url=url)
        if text is None:
            problems.append(f"{path}: {url}: HTML without main text; skipped")
            return None
    else:
        ctype = "text/plain"
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(f"{path}: {url}: undecodable bytes at offset {e.start}; skipped")
            return None
    meta = {
        "warc_record_id": rec_id,
        "warc_date": record.rec_headers.get_header("WARC-Date"),
        "content_type": ctype,
    }
    return {
        "id": rec_id,
        "text": text,
        "source": str(path),
        "url": url,
        "metadata": json.dumps(meta),
    }
