"""Drive the play page in the system's Chromium (Debian ``chromium`` + ``chromium-driver``, installed by
``infra/system_packages.sh``) through Selenium, headless. Selenium is pointed at the system executables:
its own browser download (Selenium Manager) is never used, and is not available offline anyway.

Used by ``test_browser.py`` and, for the README's screenshot, as ``python -m tests.play.browser URL OUT``.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

CHROMIUM = os.environ.get("V2W_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("V2W_CHROMEDRIVER", "/usr/bin/chromedriver")


def missing() -> str | None:
    """Why a browser cannot start here (None when it can)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) or shutil.which(path)):
            return f"{path} is missing: install Debian's chromium and chromium-driver (infra/system_packages.sh)"
    return None


def chromium(width: int = 1120, height: int = 780) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager look for a browser online
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--hide-scrollbars", "--force-device-scale-factor=1"):  # fmt: skip
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def wait_for(driver: Any, condition: Callable[[Any], Any], timeout_s: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition(driver)
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}; page state: "
                       f"{driver.execute_script('return window.v2w && window.v2w.lastError')}")  # fmt: skip


def frames_received(driver: Any) -> int:
    return int(driver.execute_script("return window.v2w ? window.v2w.framesReceived : 0") or 0)


def last_frame(driver: Any) -> str:
    return str(driver.execute_script("return window.v2w.lastFrame"))


def press(driver: Any, key: str, hold_s: float = 0.05) -> None:
    """Hold ``key`` (a ``KeyboardEvent.key`` such as ArrowLeft) like a person would, then release it."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    k = {"ArrowLeft": Keys.ARROW_LEFT, "ArrowRight": Keys.ARROW_RIGHT, "ArrowUp": Keys.ARROW_UP,
         "ArrowDown": Keys.ARROW_DOWN, " ": Keys.SPACE}.get(key, key)  # fmt: skip
    ActionChains(driver).key_down(k).pause(hold_s).key_up(k).perform()


def screenshot(url: str, out: str, *, presses: int = 12, key: str = "ArrowRight") -> None:
    """Open ``url`` in step mode, play ``presses`` frames holding ``key``, save a screenshot to ``out``."""
    driver = chromium()
    try:
        driver.get(url + "?mode=step")
        wait_for(driver, lambda d: frames_received(d) >= 1, what="the first frame")
        for _ in range(presses):
            n = frames_received(driver)
            press(driver, key)
            wait_for(driver, lambda d, n=n: frames_received(d) > n, what="a frame")
        time.sleep(0.3)  # the last image's onload draws it
        driver.save_screenshot(out)
    finally:
        driver.quit()


if __name__ == "__main__":
    screenshot(sys.argv[1], sys.argv[2], key=sys.argv[3] if len(sys.argv) > 3 else "ArrowRight")
