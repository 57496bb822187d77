"""The play page in a real Chromium against the real Ray Serve server: load, press keys, frames arrive,
different keys give different frames (the action reaches the model), on-screen buttons, live mode, and a
screenshot."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.play import browser
from tests.play.conftest import Client


@pytest.fixture
def driver():
    if (why := browser.missing()) is not None:
        pytest.fail(why)  # a CI machine without the browser is a broken install, not a skip
    d = browser.chromium()
    try:
        yield d
    finally:
        d.quit()


def _wait_new_frame(driver, after: int) -> str:
    browser.wait_for(driver, lambda d: browser.frames_received(d) > after, what=f"frame {after + 1}")
    return browser.last_frame(driver)


def test_play_in_chromium(play_server: Client, driver, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.get(play_server.url + "?mode=step")
    browser.wait_for(driver, lambda d: browser.frames_received(d) >= 1, what="the context frame")
    assert "tiny test model" in driver.find_element(By.ID, "model").text
    labels = [b.text for b in driver.find_elements(By.CSS_SELECTOR, "#buttons button")]
    assert labels == ["MOVE_LEFT ←", "MOVE_RIGHT →", "ATTACK Space"]
    assert driver.find_element(By.ID, "steps").get_attribute("value") == "2"
    context = browser.last_frame(driver)

    n = browser.frames_received(driver)
    browser.press(driver, "ArrowLeft")
    left = _wait_new_frame(driver, n)
    assert left != context
    assert driver.find_element(By.ID, "frame-index").text == "4"

    # reset (same seed, same noise), then the other key: only the action differs
    n = browser.frames_received(driver)
    driver.find_element(By.ID, "reset").click()
    assert _wait_new_frame(driver, n) == context
    n = browser.frames_received(driver)
    browser.press(driver, "ArrowRight")
    right = _wait_new_frame(driver, n)
    assert right not in (left, context)
    # and the first key again replays the first frame: the difference was the key, not the noise
    n = browser.frames_received(driver)
    driver.find_element(By.ID, "reset").click()
    _wait_new_frame(driver, n)
    n = browser.frames_received(driver)
    browser.press(driver, "ArrowLeft")
    assert _wait_new_frame(driver, n) == left

    # the on-screen button
    n = browser.frames_received(driver)
    attack = driver.find_elements(By.CSS_SELECTOR, "#buttons button")[2]
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).click_and_hold(attack).pause(0.05).release().perform()
    _wait_new_frame(driver, n)

    # live mode: frames keep coming with nothing pressed; the page shows frames/s and latency
    n = browser.frames_received(driver)
    driver.find_element(By.ID, "step-mode").click()
    browser.wait_for(driver, lambda d: browser.frames_received(d) >= n + 4, what="live frames")
    driver.find_element(By.ID, "play").click()  # pause
    assert float(driver.find_element(By.ID, "fps").text) > 0
    assert float(driver.find_element(By.ID, "latency").text) > 0
    assert driver.execute_script("return window.v2w.lastError") is None
    href = driver.find_element(By.ID, "download").get_attribute("href")
    assert href.endswith(f"/api/session/{driver.execute_script('return window.v2w.session')}/video.mp4")

    time.sleep(0.3)
    shot = tmp_path / "play.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
