"""Headless Chromium for the browser test, driven by Selenium through Debian's chromedriver.

    with chromium(profile_dir) as browser:
        browser.driver.get("http://127.0.0.1:8080/factory/")
        wait_for(browser.driver, "document.querySelector('section.line') !== null")
        screenshot(browser.driver, path)

Only local binaries are used (``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` from
Debian's ``chromium`` and ``chromium-driver``): with the driver's path given, Selenium Manager
is never asked to look anything up or download anything. chromedriver starts in its own
process group and Chromium (with its renderer, GPU and utility helpers) inherits it, so
:func:`group_alive` tells whether anything of the browser outlived ``quit()``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import JavascriptException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1440, 1000)
FLAGS = (
    "--headless=new",
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


def missing() -> str | None:
    """What keeps the browser from starting here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} is not installed (Debian's {package}; scripts/test.sh installs it)"
    return None


def group(pgid: int) -> list[str]:
    """The command names of the live (not zombie) processes in process group ``pgid``."""
    names = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                comm, rest = (proc / "stat").read_text().split(" (", 1)[1].rsplit(") ", 1)
                fields = rest.split()
            except (OSError, IndexError, ValueError):
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                names.append(comm)
    return names


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in process group ``pgid``."""
    return bool(group(pgid))


def group_gone(pgid: int, timeout_s: float = 10.0) -> bool:
    """Wait up to ``timeout_s`` for process group ``pgid`` to empty; whether it did."""
    deadline = time.monotonic() + timeout_s
    while group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


@dataclass
class Browser:
    driver: webdriver.Chrome
    pgid: int  # chromedriver's process group, which Chromium and its helpers share
    left_behind: list[str] | None = None  # what was still running after quit(), once closed


@contextlib.contextmanager
def chromium(profile_dir: Path, *, window: tuple[int, int] = WINDOW) -> Iterator[Browser]:
    """A headless Chromium with a fresh profile in ``profile_dir``; ``quit()`` on exit.

    What of the process group is still running a few seconds after ``quit()`` goes to
    ``left_behind`` (empty when ``quit()`` alone ended everything), and is then ended, so
    nothing outlives the test either way.
    """

    profile_dir = Path(profile_dir)
    profile_dir.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile_dir}", f"--window-size={window[0]},{window[1]}"):
        options.add_argument(flag)
    service = Service(
        executable_path=CHROMEDRIVER,
        log_output=str(profile_dir.parent / f"{profile_dir.name}-chromedriver.log"),
        popen_kw={"start_new_session": True},
    )
    driver = webdriver.Chrome(service=service, options=options)
    browser = Browser(driver, pgid=service.process.pid)
    pgid = browser.pgid
    try:
        # the viewport itself, whatever the headless window's frame takes
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": window[0], "height": window[1], "deviceScaleFactor": 1, "mobile": False})
        yield browser
    finally:
        driver.quit()
        gone = group_gone(pgid, timeout_s=10)
        browser.left_behind = [] if gone else group(pgid)
        if not gone:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, sig)
                if group_gone(pgid, timeout_s=5):
                    break


def evaluate(driver: webdriver.Chrome, expression: str) -> Any:
    """The value of a JavaScript expression in the current page."""
    return driver.execute_script(f"return ({expression});")


def wait_for(driver: webdriver.Chrome, expression: str, *, timeout_s: float = 60.0, poll_s: float = 0.5) -> Any:
    """Wait until a JavaScript expression is truthy in the current page; its value."""

    return WebDriverWait(driver, timeout_s, poll_frequency=poll_s, ignored_exceptions=(JavascriptException,)).until(
        lambda d: evaluate(d, expression), f"timed out after {timeout_s:.0f}s waiting for: {expression[:120]}")


def screenshot(driver: webdriver.Chrome, path: Path, *, full_page: bool = True, max_height: int = 6000) -> Path:
    """A PNG of the page: all of it (up to ``max_height`` CSS pixels), or only the viewport."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not full_page:
        if not driver.save_screenshot(str(path)):
            raise OSError(f"could not write {path}")
        return path
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], max_height), "scale": 1}})
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
