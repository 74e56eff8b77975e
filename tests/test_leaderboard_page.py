"""leaderboard/index.html in a real browser: Debian's chromium, headless, driven over its DevTools protocol (a tiny
client on websocket-client): it loads without console errors, shows every row, a click on a column header reorders
the rows, typing in a filter hides rows, and a screenshot is written."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import websocket
from test_leaderboard import current, smoke_board

from harness.results import ResultStore

from conftest import cli

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--remote-debugging-port=0",
    "--window-size=1400,1000",
]


class Browser:
    """One headless chromium and its first page, over the DevTools protocol: commands, and the events seen."""

    def __init__(self, chromium: str, profile: Path):
        self.proc = subprocess.Popen(
            [chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert self.proc.poll() is None and time.monotonic() < deadline, "chromium did not start its DevTools"
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.next_id, self.events = 0, []
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    def send(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, (method, message["error"])
                return message["result"]
            self.events.append(message)

    def wait_for(self, event: str) -> None:
        while not any(e.get("method") == event for e in self.events):
            self.events.append(json.loads(self.ws.recv()))

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the middle of the element."""
        box = self.js(
            f"(() => {{const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block: 'center'}});"
            "const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2];})()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def errors(self) -> list:
        return [
            e["params"]
            for e in self.events
            if e.get("method") == "Runtime.exceptionThrown"
            or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
            or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
        ]

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def browser(chromium, tmp_path):
    b = Browser(chromium, tmp_path / "profile")
    yield b
    b.close()


VISIBLE_ROWS = "[...document.querySelectorAll('tbody tr')].filter(r => r.offsetParent !== null)"
ROWS_OF = "[...document.getElementById('{id}').closest('tbody').rows].map(r => r.dataset.method)"


def test_the_page_loads_sorts_filters_and_screenshots_in_chromium(browser, tmp_path, capsys):
    store = ResultStore(tmp_path / "results")
    results = smoke_board() + [current(m, 0, v, data="real") for m, v in (("a", 70.0), ("z", 75.0), ("m", 72.0))]
    results += [current("c", 1, 0, task="flowers102_knn", status="failed")]
    for r in results:
        store.put(r)
    out = tmp_path / "board" / "README.md"
    assert cli(capsys, "leaderboard", "--results", str(store.root), "--out", str(out))[0] == 0

    browser.send("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)
    browser.send("Page.navigate", url=(out.parent / "index.html").as_uri())
    browser.wait_for("Page.loadEventFired")
    assert browser.errors() == []
    text = browser.js("document.body.innerText")  # the notes' markdown is rendered, not shown
    assert "**" not in text and "`" not in text and "not comparable to published results" in text

    every = browser.js("document.querySelectorAll('tbody tr').length")
    assert (
        browser.js(f"{VISIBLE_ROWS}.length") == every == 15
    )  # summaries: smoke 3, one real suite 3; tasks 2 + 3 + 3; 1 failure

    real = browser.js("document.querySelector('section[data-data=real][data-task] tbody tr').id")
    assert browser.js(ROWS_OF.format(id=real)) == ["z", "m", "a"]  # best first
    table = f"document.getElementById('{real}').closest('table')"
    browser.click("section[data-data=real][data-task] th:nth-child(1)")  # method, ascending
    assert browser.js(ROWS_OF.format(id=real)) == ["a", "m", "z"]
    browser.click("section[data-data=real][data-task] th:nth-child(3)")  # miou, ascending
    assert browser.js(ROWS_OF.format(id=real)) == ["a", "m", "z"]
    browser.click("section[data-data=real][data-task] th:nth-child(3)")  # miou, descending
    assert browser.js(ROWS_OF.format(id=real)) == ["z", "m", "a"]
    assert browser.js(f"{table}.querySelector('th[data-dir]').textContent") == "miou ↑"

    browser.click("#f-method")
    browser.send("Input.insertText", text="z")  # typed: the method filter keeps z's rows alone
    shown = browser.js(f"{VISIBLE_ROWS}.map(r => r.dataset.method)")
    assert shown == ["z", "z"]  # its summary row and its task row
    browser.js("document.getElementById('f-method').value = ''")
    browser.js("const d = document.getElementById('f-data'); d.value = 'real'; d.dispatchEvent(new Event('input'))")
    assert set(browser.js(f"{VISIBLE_ROWS}.map(r => r.dataset.data)")) == {"real"}
    assert browser.js(f"{VISIBLE_ROWS}.length") == 6  # the real summary's 3 rows and the real task's 3
    assert browser.errors() == []

    shot = tmp_path / "leaderboard.png"
    shot.write_bytes(base64.b64decode(browser.send("Page.captureScreenshot", format="png")["data"]))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
