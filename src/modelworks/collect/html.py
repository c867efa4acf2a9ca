"""Main text of an HTML page, shared by the file, WARC and crawl readers."""

from __future__ import annotations


def extract_html(html: str | bytes, url: str | None = None) -> str | None:
    """The page's main text (trafilatura: no menus, footers or ads), or None when it has none."""
    try:
        import trafilatura
    except ModuleNotFoundError as e:
        if e.name != "trafilatura":
            raise
        raise ImportError("reading HTML needs trafilatura: pip install trafilatura") from None
    text = trafilatura.extract(html, url=url, include_comments=False, favor_precision=True)
    return text or None
