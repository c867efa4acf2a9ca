"""A polite, resumable web crawler (standard library HTTP; trafilatura for the main text).

Breadth-first from the seed URLs, staying on the seeds' hosts or on `allow_domains`; honours
robots.txt (RFC 9309: a missing file allows all, a 5xx disallows all; Crawl-delay raises the
per-host delay); at most one request per host every `delay_s`; `max_pages` and `max_depth`;
timeouts, 429 and 5xx answers are retried `retries` times with exponential backoff; bodies over
`max_bytes` are dropped. Every fetched page is appended to `<state_dir>/pages.jsonl` at once, so
a re-run (after a crash, or with larger limits) never fetches a page it already has.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import urllib.robotparser
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Literal
from urllib.parse import urldefrag, urljoin, urlsplit

from pydantic import Field

from modelworks.collect.html import extract_html
from modelworks.collect.source import Source


@dataclass
class CrawlSettings:
    seeds: list[str]
    state_dir: Path
    allow_domains: list[str] = field(default_factory=list)
    max_pages: int = 100
    max_depth: int = 2
    delay_s: float = 1.0
    user_agent: str = "modelworks-crawler"
    timeout_s: float = 10.0
    retries: int = 2
    backoff_s: float = 1.0
    max_bytes: int = 5_000_000


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.hrefs.append(href)


def links_of(html: str, base: str) -> list[str]:
    parser = _Links()
    parser.feed(html)
    out = []
    for href in parser.hrefs:
        url = urldefrag(urljoin(base, href))[0]
        if urlsplit(url).scheme in ("http", "https") and url not in out:
            out.append(url)
    return out


class _Fetcher:
    """HTTP GET with the user agent, a per-host delay, retries with backoff and a size cap."""

    def __init__(self, s: CrawlSettings, problems: list[str]) -> None:
        self.s, self.problems = s, problems
        self.next_time: dict[str, float] = {}
        self.delay: dict[str, float] = {}

    def _wait(self, host: str) -> None:
        at = self.next_time.get(host, 0.0)
        now = time.monotonic()
        if at > now:
            time.sleep(at - now)

    def _done(self, host: str) -> None:
        # the delay runs from the end of a response, so a slow server gets a slower crawler
        self.next_time[host] = time.monotonic() + self.delay.get(host, self.s.delay_s)

    def get(self, url: str) -> tuple[int, str, bytes | None] | None:
        """(status, content type, body or None when over max_bytes), or None after a transient
        problem (timeouts, 5xx: already reported; a later run tries again)."""
        host = urlsplit(url).netloc
        for attempt in range(self.s.retries + 1):
            if attempt:
                time.sleep(self.s.backoff_s * 2 ** (attempt - 1))
            self._wait(host)
            req = urllib.request.Request(url, headers={"User-Agent": self.s.user_agent})
            try:
                return self._get_once(req, url)
            except urllib.error.HTTPError as e:
                if e.code == 429 or e.code >= 500:
                    reason = f"HTTP {e.code}"
                else:
                    return e.code, "", b""
            except (urllib.error.URLError, TimeoutError, OSError) as e:
                reason = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            finally:
                self._done(host)
            if attempt == self.s.retries:
                self.problems.append(f"{url}: {reason} after {attempt + 1} tries; skipped")
        return None

    def _get_once(self, req: urllib.request.Request, url: str):
        with urllib.request.urlopen(req, timeout=self.s.timeout_s) as resp:
            body = resp.read(self.s.max_bytes + 1)
            ctype = resp.headers.get("Content-Type", "")
            if len(body) > self.s.max_bytes:
                self.problems.append(f"{url}: body over max_bytes={self.s.max_bytes}; skipped")
                return resp.status, ctype, None
            return resp.status, ctype, body


def _load_state(path: Path) -> dict[str, dict]:
    pages: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                page = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash: that page is fetched again
                continue
            pages[page["url"]] = page
    return pages


def crawl(s: CrawlSettings, problems: list[str]) -> Iterator[dict]:
    """Yields one document per fetched HTML page with main text (cached pages first)."""
    if not s.seeds:
        raise ValueError("urls: give at least one seed URL")
    for seed in s.seeds:
        if urlsplit(seed).scheme not in ("http", "https"):
            raise ValueError(f"urls: {seed!r} is not an http(s) URL")
    s.state_dir.mkdir(parents=True, exist_ok=True)
    state_path = s.state_dir / "pages.jsonl"
    pages = _load_state(state_path)
    hosts = {urlsplit(u).netloc for u in s.seeds}
    domains = [d.lower() for d in s.allow_domains]

    def in_scope(url: str) -> bool:
        host = urlsplit(url).hostname or ""
        if domains:
            return any(host == d or host.endswith("." + d) for d in domains)
        return urlsplit(url).netloc in hosts

    fetcher = _Fetcher(s, problems)
    robots: dict[str, urllib.robotparser.RobotFileParser] = {}

    def allowed(url: str) -> bool:
        parts = urlsplit(url)
        if parts.netloc not in robots:
            rp = urllib.robotparser.RobotFileParser()
            got = fetcher.get(f"{parts.scheme}://{parts.netloc}/robots.txt")
            if got is None:  # unreachable (5xx, timeouts): RFC 9309 says assume disallow-all
                rp.disallow_all = True
                problems.append(f"{parts.netloc}: robots.txt unreachable; host skipped")
            elif got[0] >= 400 or got[2] is None:
                rp.allow_all = True
            else:
                rp.parse(got[2].decode("utf-8", errors="replace").splitlines())
                delay = rp.crawl_delay(s.user_agent)
                if delay:
                    fetcher.delay[parts.netloc] = max(s.delay_s, float(delay))
            robots[parts.netloc] = rp
        return robots[parts.netloc].can_fetch(s.user_agent, url)

    queue = deque((u, 0) for u in s.seeds)
    seen = set(s.seeds)
    n_pages = 0
    with open(state_path, "a", encoding="utf-8") as state:
        while queue and n_pages < s.max_pages:
            url, depth = queue.popleft()
            page = pages.get(url)
            if page is None:
                if not allowed(url):
                    problems.append(f"{url}: disallowed by robots.txt; not fetched")
                    continue
                got = fetcher.get(url)
                if got is None:
                    continue
                status, ctype, body = got
                page = {"url": url, "depth": depth, "status": status, "fetched_at": time.time()}
                if body is None:
                    page["skipped"] = "over max_bytes"
                elif status < 400 and "html" in ctype.lower():
                    html = body.decode("utf-8", errors="replace")
                    page["links"] = links_of(html, url)
                    page["text"] = extract_html(html, url=url)
                elif status >= 400:
                    problems.append(f"{url}: HTTP {status}; skipped")
                state.write(json.dumps(page) + "\n")
                state.flush()
                pages[url] = page
            n_pages += 1
            if page.get("text"):
                meta = {"depth": depth, "status": page["status"], "fetched_at": page["fetched_at"]}
                yield {
                    "id": url,
                    "text": page["text"],
                    "source": "crawl:" + ",".join(sorted(hosts)),
                    "url": url,
                    "metadata": json.dumps(meta),
                }
            if depth < s.max_depth:
                for link in page.get("links", []):
                    if link not in seen and in_scope(link):
                        seen.add(link)
                        queue.append((link, depth + 1))


class CrawlSource(Source):
    """A polite web crawl from seed URLs (robots.txt, per-host delay, resumable)."""

    type: Literal["crawl"] = "crawl"
    urls: list[str] = Field(default_factory=list, description="seed URLs")
    allow_domains: list[str] = Field(
        default_factory=list,
        description="domains to follow links into (subdomains too); empty = seeds' hosts",
    )
    max_pages: int = Field(100, ge=1, description="pages in the collection at most")
    max_depth: int = Field(2, ge=0, description="link hops from a seed at most")
    delay_s: float = Field(
        1.0, ge=0, description="seconds between requests to a host (robots.txt may raise it)"
    )
    user_agent: str = Field(
        "modelworks-crawler/0.1 (+https://github.com/modelworks)",
        description="User-Agent sent and matched against robots.txt",
    )
    timeout_s: float = Field(10.0, gt=0, description="seconds before a request times out")
    retries: int = Field(2, ge=0, description="retries after a timeout, 429 or 5xx")
    backoff_s: float = Field(
        1.0, ge=0, description="first retry waits this long, doubling each time"
    )
    max_bytes: int = Field(5_000_000, ge=1, description="larger bodies are skipped")
    state_dir: str | None = Field(
        None,
        description="where fetched pages are kept for resuming; default "
        "<runs_dir>/<name>/crawl_state/<source index>",
    )

    def read(self, where, problems, run_dir, bad):
        index = where.rsplit(".", 1)[-1]
        state = Path(self.state_dir) if self.state_dir else Path(run_dir) / "crawl_state" / index
        settings = CrawlSettings(
            seeds=self.urls, state_dir=state, allow_domains=self.allow_domains,
            max_pages=self.max_pages, max_depth=self.max_depth, delay_s=self.delay_s,
            user_agent=self.user_agent, timeout_s=self.timeout_s, retries=self.retries,
            backoff_s=self.backoff_s, max_bytes=self.max_bytes,
        )  # fmt: skip
        try:
            yield from crawl(settings, problems)
        except ValueError as e:
            raise ValueError(f"{where}.{e}") from None
