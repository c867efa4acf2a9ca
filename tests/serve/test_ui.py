"""The web page and the HTML report in a real headless Chromium (Debian's `chromium` package)
driven by Playwright, against a real server on a loopback port.

Skips, with the reason, when chromium or the playwright package is missing; CI installs both:
    apt-get install -y chromium && pip install playwright      # never `playwright install`
"""

import base64
import io
import json
import os
import shutil
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelworks.config import load_config
from modelworks.pipeline import run
from tests.conftest import ROOT, served, tiny_overrides

CHROMIUM = os.environ.get("MODELWORKS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip(
        f"chromium is not installed ({CHROMIUM} missing): apt-get install -y chromium",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1000, "height": 760})
    pg = context.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    yield pg
    context.close()
    assert not problems, problems


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("ui") / "runs"
    # a little more training than `tiny`, so the screenshot shows words rather than newlines
    more = [
        "pretrain.steps=80",
        "pretrain.lr=0.006",
        "pretrain.batch_size=8",
        "model.context_len=96",
    ]  # room for a 48-token reply (the chat test)
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", [*tiny_overrides(runs, "lm"), *more])
    run(cfg)
    return cfg.run_dir


@pytest.fixture(scope="module")
def lm_server(lm_run):
    with served(lm_run) as (url, _):
        yield url


def _keep(shot: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / shot.name)
    print(f"screenshot: {shot} (copy at {ARTIFACTS / shot.name})")


def test_chat_streams_tokens_into_the_page(page, lm_server, tmp_path):
    page.goto(lm_server + "/")
    page.wait_for_selector("#chat-panel:not([hidden])")
    sync_api.expect(page.locator("#health")).to_have_attribute("data-state", "ok")
    page.click("#settings summary")
    page.fill("#temperature", "0")
    # the server merges the events a client has not yet read into one chunk: 12 tokens made in
    # 30 ms once reached a busy CI page as one; 48 take long enough to arrive in several
    page.fill("#max-tokens", "48")
    # record every state of the assistant's bubble while it fills
    page.evaluate(
        """() => {
        window.seen = [];
        new MutationObserver(() => {
          const m = document.querySelector('.msg.assistant');
          if (m) window.seen.push(m.textContent);
        }).observe(document.getElementById('messages'),
                   {subtree: true, childList: true, characterData: true});
    }"""
    )
    prompt = "The list"
    page.fill("#prompt", prompt)
    page.press("#prompt", "Enter")
    page.wait_for_selector(".msg.assistant[data-done='1']", timeout=60_000)
    reply = page.text_content(".msg.assistant")  # raw text: a tiny model likes whitespace
    seen = [s for s in page.evaluate("window.seen") if s]
    shot = tmp_path / "chat.png"
    page.screenshot(path=str(shot), full_page=True)
    _keep(shot)
    assert not page.locator(".msg.error").count(), page.inner_text("#error")
    # tokens arrived one chunk at a time: the bubble went through growing prefixes of the reply
    assert int(page.get_attribute(".msg.assistant", "data-tokens")) >= 2
    assert len(set(seen)) >= 2, seen
    assert all(reply.startswith(s) for s in seen), seen
    assert page.inner_text(".msg.user") == prompt
    # the page shows exactly what the API answers for the same greedy request
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 48,
        "temperature": 0,
        "top_p": 0.95,
    }
    answer = httpx.post(lm_server + "/v1/chat/completions", json=body, timeout=60).json()
    assert reply == answer["choices"][0]["message"]["content"]
    assert reply


def test_chat_falls_back_to_streaming_completions(page, lm_server):
    # a server without /v1/chat/completions (as its OpenAPI document tells the page)
    def without_chat(route):
        spec = route.fetch().json()
        del spec["paths"]["/v1/chat/completions"]
        route.fulfill(json=spec)

    page.route("**/openapi.json", without_chat)
    used = []
    page.on("request", lambda r: r.method == "POST" and used.append(r.url))
    page.goto(lm_server + "/")
    sync_api.expect(page.locator("#chat-mode")).to_have_text("/v1/completions")
    page.fill("#prompt", "def")
    page.press("#prompt", "Enter")
    page.wait_for_selector(".msg.assistant[data-done='1']", timeout=60_000)
    assert not page.locator(".msg.error").count(), page.inner_text("#error")
    assert int(page.get_attribute(".msg.assistant", "data-tokens")) >= 2
    assert [u.removeprefix(lm_server) for u in used] == ["/v1/completions"]


def test_page_files_cannot_escape_the_ui_folder(lm_server):
    host, port = lm_server.removeprefix("http://").split(":")
    for path in ["/ui/../app.py", "/ui/..%2fapp.py", "/ui/%2e%2e/%2e%2e/serve/app.py"]:
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
        status = raw.split(b" ", 2)[1]
        assert status == b"404", (path, raw[:200])
        assert b"create_app" not in raw
    assert httpx.get(lm_server + "/ui/app.js").status_code == 200


def test_report_html_images_render(page, lm_run, tmp_path):
    report = lm_run / "evaluate" / "report.html"
    html = report.read_text()
    # self-contained: every image is embedded (data: URL), none is read from disk
    copy = tmp_path / "alone" / "report.html"
    copy.parent.mkdir()
    copy.write_text(html)
    page.goto(copy.as_uri())
    page.wait_for_load_state("load")
    images = page.evaluate(
        "() => [...document.images].map(i => ({src: i.src.slice(0, 40), ok: i.complete "
        "&& i.naturalWidth > 0, w: i.naturalWidth, h: i.naturalHeight}))"
    )
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    _keep(shot)
    assert images, "report.html has no images"
    broken = [i for i in images if not i["ok"]]
    assert not broken, broken
    assert all(i["w"] >= 100 and i["h"] >= 100 for i in images), images


@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
    runs = tmp_path_factory.mktemp("ui-img") / "runs"
    cfg = load_config(
        ROOT / "configs" / "mlp.yaml",
        [f"runs_dir={runs}", "pretrain.steps=150", "pretrain.eval_every=75", "threads=1"],
    )
    run(cfg)
    with served(cfg.run_dir) as (url, _):
        yield url


@pytest.mark.slow
def test_image_panel_classifies_an_uploaded_digit(page, image_server, tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    png = tmp_path / "digit.png"
    img = Image.fromarray(np.uint8(d.images[-1] * 255 / 16)).resize((28, 28))
    img.save(png)
    page.goto(image_server + "/")
    page.wait_for_selector("#image-panel:not([hidden])")
    assert page.locator("#chat-panel").is_hidden()  # a classifier has no chat
    page.set_input_files("#image-file", str(png))
    page.wait_for_selector("#image-result li .bar")
    shown = page.locator("#image-result li").all_inner_texts()
    shot = tmp_path / "image.png"
    page.screenshot(path=str(shot), full_page=True)
    _keep(shot)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    body = {"image": base64.b64encode(buf.getvalue()).decode(), "top_k": 5}
    api = httpx.post(image_server + "/v1/images/classify", json=body, timeout=30).json()
    labels = api["data"][0]["labels"]
    assert [s.split()[0] for s in shown] == [x["label"] for x in labels]
    assert json.loads(json.dumps(labels))[0]["probability"] > 0


@pytest.mark.slow
def test_gallery_panel_shows_generated_images_of_the_chosen_class(page, tmp_path_factory):
    from tests.tasks.test_image_generation import TINY

    runs = tmp_path_factory.mktemp("ui-gen") / "runs"
    cfg = load_config(ROOT / "configs" / "generation.yaml", [f"runs_dir={runs}", *TINY])
    run(cfg)
    with served(cfg.run_dir, "threads=1") as (url, _):
        page.goto(url + "/")
        page.wait_for_selector("#gallery-panel:not([hidden])")
        assert page.locator("#gen-class option").count() == 10
        page.select_option("#gen-class", "3")
        page.fill("#gen-n", "4")
        page.fill("#gen-seed", "11")
        page.click("#gen-send")
        page.wait_for_function("document.querySelectorAll('#gallery img').length === 4")
        loaded = "[...document.querySelectorAll('#gallery img')].every(i => i.naturalWidth)"
        page.wait_for_function(loaded)
        shown = page.eval_on_selector_all("#gallery img", "els => els.map(e => e.src)")
        shot = tmp_path_factory.mktemp("ui-gen-shot") / "gallery.png"
        page.screenshot(path=str(shot), full_page=True)
        _keep(shot)
        body = {"prompt": "3", "n": 4, "size": "64x64", "seed": 11}
        api = httpx.post(url + "/v1/images/generations", json=body, timeout=60).json()
        assert shown == ["data:image/png;base64," + d["b64_json"] for d in api["data"]]


@pytest.fixture(scope="module")
def detect_server(tmp_path_factory):
    from tests.tasks.test_detection import TINY

    runs = tmp_path_factory.mktemp("ui-det") / "runs"
    cfg = load_config(ROOT / "configs" / "detection.yaml", [f"runs_dir={runs}", *TINY])
    run(cfg)
    with served(cfg.run_dir) as (url, _):
        yield url


def test_detect_panel_draws_the_boxes_the_api_returns(page, detect_server, tmp_path):
    from modelworks.collect.detection import digit_scenes

    png = tmp_path / "scene.png"
    png.write_bytes(next(digit_scenes(count=1))["image"])
    page.goto(detect_server + "/")
    page.wait_for_selector("#detect-panel:not([hidden])")
    page.fill("#detect-threshold", "0")
    page.set_input_files("#detect-file", str(png))
    page.wait_for_function("document.getElementById('detect-stats').textContent.includes('box')")
    shown = page.inner_text("#detect-stats")
    size = page.evaluate("[document.getElementById('detect-canvas').width, "
                         "document.getElementById('detect-canvas').height]")  # fmt: skip
    shot = tmp_path / "detect.png"
    page.screenshot(path=str(shot), full_page=True)
    _keep(shot)
    body = {"image": base64.b64encode(png.read_bytes()).decode(), "score_threshold": 0}
    api = httpx.post(detect_server + "/v1/images/detect", json=body, timeout=30).json()
    assert shown == f"{len(api['data'][0]['detections'])} box(es)" and size == [384, 384]
