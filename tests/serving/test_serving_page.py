"""The moderator page in a real headless Chromium: pick a rendered meme, score it, read the score back.

Driven over the Chrome DevTools Protocol (``websocket-client``): ``--dump-dom`` cannot upload a file, and
Selenium would need a matching chromedriver. Skipped where Debian's ``chromium`` is not installed.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import pytest
from PIL import ImageDraw, ImageFont
from serving_helpers import synthetic_image

pytest.importorskip("uvicorn")
pytest.importorskip("multipart")
websocket = pytest.importorskip("websocket")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def live_server(scorer):
    """The app in a real uvicorn server on loopback, in a thread."""
    import uvicorn

    from memeguard.serving.http import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(scorer, api_key=""), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(30)


class DevTools:
    """A minimal CDP client: one page, request/response by id (events are skipped)."""

    def __init__(self, url: str) -> None:
        self.socket = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self.ids = itertools.count(1)

    def call(self, method: str, **params: object) -> dict:
        call_id = next(self.ids)
        self.socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> object:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, seconds: float = 60.0) -> object:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}")


@pytest.fixture()
def browser(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [
            *(CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"),
            *(f"--remote-debugging-port={port}", "--remote-allow-origins=*"),
            *(f"--user-data-dir={tmp_path / 'profile'}", "--window-size=900,1000", "about:blank"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as answer:
                    pages = [t for t in json.load(answer) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("chromium did not open its DevTools port")
            time.sleep(0.2)
        tools = DevTools(pages[0]["webSocketDebuggerUrl"])
        yield tools
        tools.socket.close()
    finally:
        process.terminate()
        process.wait(30)


def rendered_meme(path):
    image = synthetic_image(7, (320, 240))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=22)
    draw.text(
        (20, 190), "NOBODY EXPECTS THE CAT", font=font, fill="white", stroke_width=2, stroke_fill="black"
    )
    image.save(path)
    return path


def test_page_scores_a_dropped_meme(live_server, browser, scorer, tmp_path):
    meme = rendered_meme(tmp_path / "meme.png")
    text = "nobody expects the cat"
    browser.call("Page.enable")
    browser.call("Page.navigate", url=live_server)
    browser.wait_for("document.readyState === 'complete' && !!document.getElementById('file')")
    root = browser.call("DOM.getDocument")["root"]["nodeId"]
    file_input = browser.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
    browser.call("DOM.setFileInputFiles", files=[str(meme)], nodeId=file_input)
    browser.evaluate(f"document.getElementById('text').value = {json.dumps(text)}")
    browser.wait_for("!document.getElementById('go').disabled")
    browser.evaluate("document.getElementById('go').click()")
    shown = browser.wait_for("document.getElementById('score').textContent")
    assert browser.evaluate("document.getElementById('error').textContent") == ""
    expected = scorer.score(meme, text)
    assert re.fullmatch(r"\d\.\d{3}", str(shown)) and float(shown) == pytest.approx(
        expected.proba, abs=0.0006
    )
    label = browser.evaluate("document.getElementById('label').textContent")
    assert label == ("hateful" if expected.label else "not hateful")
    assert browser.evaluate("document.getElementById('used-text').textContent") == text
    screenshot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    (tmp_path / "page.png").write_bytes(screenshot)
    assert screenshot.startswith(b"\x89PNG")


def test_page_shows_the_explanation_overlay(live_server, browser, scorer, tmp_path):
    """With "explain" ticked the page shows the overlay PNG the server drew for this meme."""
    pytest.importorskip("captum")
    meme = rendered_meme(tmp_path / "meme.png")
    browser.call("Page.enable")
    browser.call("Page.navigate", url=live_server)
    browser.wait_for("document.readyState === 'complete' && !!document.getElementById('explain')")
    root = browser.call("DOM.getDocument")["root"]["nodeId"]
    file_input = browser.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
    browser.call("DOM.setFileInputFiles", files=[str(meme)], nodeId=file_input)
    browser.evaluate("document.getElementById('text').value = 'nobody expects the cat'")
    browser.evaluate("document.getElementById('explain').checked = true")
    browser.wait_for("!document.getElementById('go').disabled")
    browser.evaluate("document.getElementById('go').click()")
    overlay = "document.getElementById('overlay')"
    loaded = f"(o => o.style.display === 'block' && o.complete && o.naturalWidth > 0)({overlay})"
    browser.wait_for(loaded, seconds=120)
    assert browser.evaluate("document.getElementById('error').textContent") == ""
    width = browser.evaluate("document.getElementById('overlay').naturalWidth")
    assert width == 320  # the meme's width: the overlay is drawn on the meme itself
    assert "Strongest words: " in browser.evaluate("document.getElementById('explained').textContent")
    screenshot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    (tmp_path / "page-explained.png").write_bytes(screenshot)
