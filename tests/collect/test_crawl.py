"""The crawler against a real HTTP server on 127.0.0.1: scope, robots.txt, per-host rate limit
(from the server's own request log), retries, size cap, timeouts and resume."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest

from modelworks.collect import collect
from modelworks.collect.crawl import CrawlSettings, crawl
from modelworks.config import load_config

PARA = (
    "<p>The history of the river valley is long and varied. Farmers settled along the banks of "
    "the river and built small villages that grew into towns over many centuries.</p>"
    "<p>Trade with the coast brought new tools, and the people learned to work with iron.</p>"
)


def _page(title, links):
    anchors = "".join(f'<li><a href="{h}">{h}</a></li>' for h in links)
    return (
        f"<html><head><title>{title}</title></head><body><article><h1>{title}</h1>"
        f"{PARA}<p>This page is called {title}.</p></article><ul>{anchors}</ul></body></html>"
    )


SITE = {
    "/": _page("home", ["/a.html", "/b.html#top", "/private/secret.html", "http://example.invalid/x",
                        "/error.html", "/huge.html", "/slow.html"]),
    "/a.html": _page("page a", ["/c.html", "/"]),
    "/b.html": _page("page b", ["/a.html"]),
    "/c.html": _page("page c", ["/d.html"]),
    "/d.html": _page("page d", []),
    "/private/secret.html": _page("secret", []),
}  # fmt: skip
ROBOTS = "User-agent: *\nDisallow: /private/\n"


class Site:
    def __init__(self, robots=ROBOTS):
        self.log: list[tuple[str, float, str]] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                site.log.append((self.path, time.monotonic(), self.headers.get("User-Agent")))
                if self.path == "/robots.txt":
                    return self._send(200, robots, "text/plain")
                if self.path == "/error.html":
                    return self._send(500, "boom", "text/html")
                if self.path == "/huge.html":
                    return self._send(200, _page("huge", []) + "x" * 200_000, "text/html")
                if self.path == "/slow.html":
                    time.sleep(1.5)
                    return self._send(200, _page("slow", []), "text/html")
                if self.path in SITE:
                    return self._send(200, SITE[self.path], "text/html; charset=utf-8")
                self._send(404, "not found", "text/html")

            def _send(self, code, body, ctype):
                data = body.encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self):
        return [p for p, _, _ in self.log]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site():
    s = Site()
    yield s
    s.close()


def _settings(site, tmp_path, **kw):
    base = dict(seeds=[site.url + "/"], state_dir=tmp_path / "state", delay_s=0.15,
                user_agent="mw-test-bot/1.0", timeout_s=0.5, retries=1, backoff_s=0.05,
                max_bytes=100_000, max_depth=2, max_pages=50)  # fmt: skip
    base.update(kw)
    return CrawlSettings(**base)


def test_crawl_is_polite_and_stays_in_scope(site, tmp_path):
    problems = []
    docs = list(crawl(_settings(site, tmp_path), problems))
    urls = [d["url"] for d in docs]
    assert urls == [site.url + p for p in ["/", "/a.html", "/b.html", "/c.html"]]  # depth <= 2
    assert "page c" in docs[3]["text"] and json.loads(docs[3]["metadata"])["depth"] == 2
    paths = site.paths()
    assert "/private/secret.html" not in paths  # robots.txt honoured
    assert "/d.html" not in paths  # depth 3
    assert paths.count("/robots.txt") == 1 and paths.count("/error.html") == 2  # one retry
    assert all(ua == "mw-test-bot/1.0" for _, _, ua in site.log)
    times = [t for _, t, _ in site.log]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 0.15 * 0.95, gaps  # one host: never two requests within delay_s
    text = "\n".join(problems)
    assert "secret.html: disallowed by robots.txt" in text
    assert "error.html: HTTP 500 after 2 tries" in text
    assert "huge.html: body over max_bytes=100000" in text
    assert "slow.html:" in text and "after 2 tries" in text  # timed out twice


def test_crawl_resumes_without_refetching(site, tmp_path):
    first = list(crawl(_settings(site, tmp_path, max_pages=2), []))
    assert len(first) == 2
    fetched = [p for p in site.paths() if p != "/robots.txt"]
    assert fetched == ["/", "/a.html"]
    site.log.clear()
    second = list(crawl(_settings(site, tmp_path, max_pages=4, max_depth=1), []))
    assert [d["url"] for d in second][:2] == [d["url"] for d in first]  # cached pages first
    again = [p for p in site.paths() if p != "/robots.txt"]
    assert "/" not in again and "/a.html" not in again and "/b.html" in again
    # a page cut mid-line by a crash is fetched again, the rest is kept
    state = tmp_path / "state" / "pages.jsonl"
    state.write_text(state.read_text() + '{"url": "http://cut')
    site.log.clear()
    third = list(crawl(_settings(site, tmp_path, max_pages=4, max_depth=1), []))
    assert [d["url"] for d in third] == [d["url"] for d in second]
    # transient failures are tried again; the page over the size cap is remembered (and counts
    # towards max_pages, which stops the crawl before slow.html)
    assert [p for p in site.paths() if p != "/robots.txt"] == ["/error.html", "/error.html"]


def test_robots_forbidding_everything_is_reported(tmp_path):
    s = Site(robots="User-agent: *\nDisallow: /\n")
    try:
        problems = []
        assert list(crawl(_settings(s, tmp_path), problems)) == []
        assert s.paths() == ["/robots.txt"]
        assert "disallowed by robots.txt" in problems[0]
    finally:
        s.close()


def test_collect_stage_crawls_with_config_and_resumes(site, tmp_path):
    overrides = [
        f"runs_dir={tmp_path / 'runs'}", "name=web", "collect.sources.0.type=crawl",
        f"collect.sources.0.urls=[{site.url}/]", "collect.sources.0.delay_s=0.05",
        "collect.sources.0.max_depth=1", "collect.sources.0.timeout_s=0.5",
        "collect.sources.0.retries=0", "collect.sources.0.max_bytes=100000",
    ]  # fmt: skip
    cfg = load_config(None, overrides)
    manifest = collect(cfg)
    rows = pq.read_table(cfg.run_dir / "collect" / "documents.parquet").to_pylist()
    assert {r["url"] for r in rows} == {site.url + "/", site.url + "/a.html", site.url + "/b.html"}
    assert manifest["summary"]["problems"]["collect.sources.0"]["count"] >= 3
    assert (cfg.run_dir / "crawl_state" / "0" / "pages.jsonl").is_file()
    site.log.clear()
    collect(load_config(None, overrides))
    assert not {"/", "/a.html", "/b.html"} & set(site.paths())  # re-run: nothing re-fetched
