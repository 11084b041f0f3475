"""A headless Debian chromium driven over the DevTools protocol (websocket-client), for the report
page's tests: load a file:// page, record every request it makes and every console message or
uncaught error, evaluate JavaScript in it and take screenshots.

    with Browser() as b:
        page = b.open(Path("report.html"), width=1366, height=768)
        page.requests, page.console, page.evaluate("document.title"), page.screenshot(path)
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket  # websocket-client (dev extra)

# The flags that run Debian's chromium here as root, with nothing of its own reaching the network.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Page:
    """One loaded page: what it requested and logged, and a way to ask it things."""

    browser: Browser
    session: str
    requests: list[str] = field(default_factory=list)
    console: list[dict] = field(default_factory=list)  # {"level", "text", "source"}: console calls, log entries, exceptions

    def evaluate(self, expression: str) -> Any:
        r = self.browser.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                   "awaitPromise": True}, self.session)
        if "exceptionDetails" in r:
            raise AssertionError(f"{expression!r} raised in the page: {r['exceptionDetails']}")
        return r["result"].get("value")

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": full_page}
        if full_page:
            w, h = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}
        data = self.browser.call("Page.captureScreenshot", params, self.session)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


class Browser:
    """A chromium process with an empty profile, and one DevTools websocket to it."""

    def __init__(self, timeout: float = 60.0) -> None:
        exe = chromium_path()
        if exe is None:
            raise FileNotFoundError("chromium is not installed. Fix: apt-get install -y chromium "
                                    "(scripts/test.sh does it when run as root).")
        self.timeout = timeout
        self.profile = Path(tempfile.mkdtemp(prefix="sds-chromium-"))
        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited {self.proc.returncode} before DevTools was up: "
                                   f"{self.proc.stderr.read().decode(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError(f"chromium did not open DevTools within {timeout:.0f} s")
            time.sleep(0.05)
        port, ws_path = port_file.read_text().split("\n")[:2]
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}{ws_path}", timeout=timeout,
                                              suppress_origin=True)
        self.port = int(port)
        self._ids = itertools.count(1)
        self._events: list[dict] = []

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        msg_id = next(self._ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        while True:
            m = json.loads(self.ws.recv())
            if m.get("id") == msg_id:
                if "error" in m:
                    raise RuntimeError(f"DevTools {method}: {m['error']}")
                return m.get("result", {})
            self._events.append(m)

    def _wait_event(self, method: str, session: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for m in self._events:
                if m.get("method") == method and m.get("sessionId") == session:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {timeout:.0f} s")
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            self._events.append(json.loads(self.ws.recv()))

    def open(self, path: Path, width: int = 1366, height: int = 768, settle_s: float = 0.5) -> Page:
        """Open `path` from file:// in a new tab of `width` x `height` CSS pixels; return once it
        has loaded, with every request and console message recorded from before navigation."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            self.call(f"{domain}.enable", {}, session)
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False}, session)
        self._events.clear()
        self.call("Page.navigate", {"url": path.resolve().as_uri()}, session)
        self._wait_event("Page.loadEventFired", session, self.timeout)
        end = time.monotonic() + settle_s  # late console messages (none expected: the page has no script)
        self.ws.settimeout(0.1)
        while time.monotonic() < end:
            with contextlib.suppress(websocket.WebSocketTimeoutException):  # nothing more arrived
                self._events.append(json.loads(self.ws.recv()))
        self.ws.settimeout(self.timeout)
        page = Page(self, session)
        for m in self._events:
            if m.get("sessionId") != session:
                continue
            p = m.get("params", {})
            if m["method"] == "Network.requestWillBeSent":
                page.requests.append(p["request"]["url"])
            elif m["method"] == "Runtime.consoleAPICalled":
                page.console.append({"level": p.get("type"), "source": "console",
                                     "text": " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))})
            elif m["method"] == "Runtime.exceptionThrown":
                page.console.append({"level": "error", "source": "exception", "text": json.dumps(p.get("exceptionDetails"))})
            elif m["method"] == "Log.entryAdded":
                e = p.get("entry", {})
                page.console.append({"level": e.get("level"), "source": e.get("source"), "text": e.get("text", "")})
        return page

    def close(self) -> None:
        if hasattr(self, "ws"):
            with contextlib.suppress(OSError, websocket.WebSocketException):
                self.ws.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:  # noqa: PYI034 (Python 3.10: no typing.Self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

