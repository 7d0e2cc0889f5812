"""A minimal headless-Chromium driver over the DevTools protocol (no Selenium/Playwright):
enough to set a cookie, open a page, wait for content, read the DOM and take a
screenshot. Uses ``websockets`` (a dependency of Airflow's API server) for the socket.

    with Chromium(profile_dir) as browser:
        page = browser.new_page()
        page.set_cookie("_token", token, "http://127.0.0.1:8080/")
        page.navigate("http://127.0.0.1:8080/factory/")
        page.wait_for("document.querySelector('section.line') !== null")
        page.screenshot(path)

Chromium runs in its own process group with networking features off (no QUIC, no
background fetches, no component updates, no sync); :meth:`Chromium.close` ends that group.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--mute-audio",
)
CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


class BrowserError(RuntimeError):
    """Chromium did not start, or a DevTools command failed or timed out."""


def find_chromium() -> str | None:
    env = os.environ.get("FACTORY_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for c in CANDIDATES:
        if Path(c).exists():
            return c
    return shutil.which("chromium")


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in process group ``pgid``."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(") ", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
    return False


class Chromium:
    def __init__(self, profile_dir: Path, *, binary: str | None = None, window: tuple[int, int] = (1440, 1000),
                 start_timeout_s: float = 60.0):
        self.profile_dir = Path(profile_dir)
        self.binary = binary or find_chromium()
        if not self.binary:
            raise BrowserError("no Chromium found (install Debian's chromium package)")
        self.window = window
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.ws: Any = None
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> Chromium:
        from websockets.sync.client import connect

        self.profile_dir.mkdir(parents=True, exist_ok=True)
        port_file = self.profile_dir / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        log = open(self.profile_dir.parent / f"{self.profile_dir.name}-chromium.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [self.binary, *FLAGS, f"--user-data-dir={self.profile_dir}", "--remote-debugging-port=0",
             f"--window-size={self.window[0]},{self.window[1]}", "about:blank"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrowserError(f"Chromium exited with {self.proc.returncode} during start")
            try:
                port, path = port_file.read_text().split("\n")[:2]
                if port and path:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        else:
            self.close()
            raise BrowserError(f"Chromium did not open its DevTools port within {self.start_timeout_s:.0f}s")
        self.ws = connect(f"ws://127.0.0.1:{port.strip()}{path.strip()}", max_size=None, open_timeout=20)
        return self

    def __enter__(self) -> Chromium:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.send("Browser.close", timeout_s=5)
            except Exception:  # noqa: BLE001 - it may close the socket before answering
                pass
            try:
                self.ws.close()
            except Exception:  # noqa: BLE001
                pass
            self.ws = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for sig in (signal.SIGTERM, signal.SIGKILL):  # the group: renderer and GPU helpers too
                if not group_alive(self.proc.pid):
                    break
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and group_alive(self.proc.pid):
                    time.sleep(0.2)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self.pid, self.proc = self.proc.pid, None

    # -- protocol ----------------------------------------------------------------------

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None,
             timeout_s: float = 30.0) -> dict[str, Any]:
        if self.ws is None:
            raise BrowserError("the browser is not running")
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"{method}: no answer within {timeout_s:.0f}s")
            try:
                raw = self.ws.recv(timeout=left)
            except TimeoutError:
                raise BrowserError(f"{method}: no answer within {timeout_s:.0f}s") from None
            data = json.loads(raw)
            if data.get("id") == msg["id"]:
                if "error" in data:
                    raise BrowserError(f"{method}: {data['error']}")
                return data.get("result", {})
            if "method" in data:
                self.events.append(data)

    def wait_event(self, method: str, *, session: str | None = None, timeout_s: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            for i, e in enumerate(self.events):
                if e.get("method") == method and (session is None or e.get("sessionId") == session):
                    return self.events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no {method} event within {timeout_s:.0f}s")
            try:
                raw = self.ws.recv(timeout=left)
            except TimeoutError:
                continue
            data = json.loads(raw)
            if "method" in data:
                self.events.append(data)

    def new_page(self) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Network"):
            page.send(f"{domain}.enable")
        page.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.window[0], "height": self.window[1], "deviceScaleFactor": 1, "mobile": False})
        return page


class Page:
    def __init__(self, browser: Chromium, session: str):
        self.browser = browser
        self.session = session

    def send(self, method: str, params: dict[str, Any] | None = None, timeout_s: float = 30.0) -> dict[str, Any]:
        return self.browser.send(method, params, session=self.session, timeout_s=timeout_s)

    def set_cookie(self, name: str, value: str, url: str, *, http_only: bool = True) -> None:
        ok = self.send("Network.setCookie", {"name": name, "value": value, "url": url, "path": "/",
                                             "httpOnly": http_only, "sameSite": "Lax"})
        if not ok.get("success", True):
            raise BrowserError(f"cookie {name} was refused for {url}")

    def navigate(self, url: str, *, timeout_s: float = 60.0) -> dict[str, Any]:
        self.browser.events = [e for e in self.browser.events if e.get("method") != "Page.loadEventFired"]
        result = self.send("Page.navigate", {"url": url}, timeout_s=timeout_s)
        if result.get("errorText"):
            raise BrowserError(f"{url}: {result['errorText']}")
        self.browser.wait_event("Page.loadEventFired", session=self.session, timeout_s=timeout_s)
        return result

    def evaluate(self, expression: str, *, timeout_s: float = 30.0) -> Any:
        out = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                        timeout_s=timeout_s)
        if "exceptionDetails" in out:
            raise BrowserError(f"{expression[:80]}: {out['exceptionDetails'].get('text')}")
        return out.get("result", {}).get("value")

    def wait_for(self, expression: str, *, timeout_s: float = 60.0, poll_s: float = 0.5) -> Any:
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(expression)
            except BrowserError:
                last = None
            if last:
                return last
            time.sleep(poll_s)
        raise BrowserError(f"timed out after {timeout_s:.0f}s waiting for: {expression[:120]}")

    def url(self) -> str:
        return self.evaluate("location.href")

    def dom(self) -> str:
        return self.evaluate("document.documentElement.outerHTML")

    def screenshot(self, path: Path, *, full_page: bool = True) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = self.send("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics.get("contentSize")
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 6000),
                                "scale": 1})
        data = self.send("Page.captureScreenshot", params, timeout_s=60)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
