"""The browser demo (GET /demo) in headless Chromium (Debian's chromium and chromium-driver, which .ci/run
installs): a file's words appear with their times and are highlighted in turn as it plays; a WAV fed as the
microphone gives partials, then a final transcript of what it says.

DEMO_SCREENSHOTS=<folder> saves a screenshot of each (the README's)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.helpers import encode, normalise, phrase_recording, require, word_errors

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def chromium():
    require(bool(CHROMIUM and CHROMEDRIVER), "needs Debian's chromium and chromium-driver (apt-get install chromium "
                                             "chromium-driver; .ci/run installs them)")
WAIT_S = 90


def browser(*flags: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,460",
                 "--autoplay-policy=no-user-gesture-required", "--use-fake-ui-for-media-stream", *flags):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def screenshot(driver, name: str) -> None:
    if folder := os.environ.get("DEMO_SCREENSHOTS"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def wait(driver, condition, timeout_s: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(lambda d: condition(d))


def test_a_file_shows_its_words_highlighted_in_turn_as_it_plays(digits_app, tmp_path):
    from selenium.webdriver.common.by import By

    recording = phrase_recording(["seven", "one", "four", "two", "nine"], voice=1, word_gap_s=(0.3, 0.4))
    path = tmp_path / "speech.wav"
    path.write_bytes(encode(recording.audio))
    expected = httpx.post(digits_app.url + "/v1/audio/transcriptions", files={"file": ("a.wav", path.read_bytes())},
                          data={"response_format": "verbose_json", "timestamp_granularities[]": "word"},
                          timeout=60).json()["words"]
    driver = browser()
    try:
        driver.get(digits_app.url + "/demo")
        wait(driver, lambda d: d.find_element(By.ID, "model").get_attribute("value"))  # models listed
        driver.find_element(By.ID, "file").send_keys(str(path))
        spans = wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#words .word")) == len(expected)
                     and d.find_elements(By.CSS_SELECTOR, "#words .word"))
        assert [s.text for s in spans] == [w["word"] for w in expected]
        assert [float(s.get_attribute("data-start")) for s in spans] == [w["start"] for w in expected]
        assert "transcribed in" in driver.find_element(By.ID, "file-status").text
        driver.execute_script("document.getElementById('player').play()")
        highlighted: list[str] = []

        def next_word_highlighted(d) -> bool:
            current = [s.get_attribute("data-start") for s in d.find_elements(By.CSS_SELECTOR, ".word.current")]
            if len(current) == 1 and (not highlighted or highlighted[-1] != current[0]):
                highlighted.append(current[0])
            return len(highlighted) >= 3

        wait(driver, next_word_highlighted)
        screenshot(driver, "demo-file.png")
    finally:
        driver.quit()
    # each highlighted word is a later one than the one before: the highlight follows the audio
    assert [float(t) for t in highlighted] == sorted(float(t) for t in highlighted)


def test_the_microphone_streams_partials_then_a_final_transcript(digits_app, tmp_path):
    from selenium.webdriver.common.by import By

    recording = phrase_recording(["three", "eight", "zero", "six", "five"], voice=2, word_gap_s=(0.3, 0.4),
                                 lead_s=0.5, tail_s=2.0)
    path = tmp_path / "microphone.wav"
    path.write_bytes(encode(recording.audio))
    driver = browser("--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={path}%noloop")
    try:
        driver.get(digits_app.url + "/demo")
        wait(driver, lambda d: d.find_element(By.ID, "model").get_attribute("value"))
        driver.execute_script("""
            window.seen = new Set();
            new MutationObserver(() => document.querySelectorAll('#live li').forEach(li => seen.add(li.className)))
              .observe(document.getElementById('live'), {subtree: true, childList: true, attributes: true});""")
        driver.find_element(By.ID, "record").click()
        final = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#live li.final"))[0]
        text = driver.execute_script("return arguments[0].firstChild.textContent", final)  # (not its times)
        screenshot(driver, "demo-live.png")
        assert "partial" in driver.execute_script("return Array.from(window.seen)"), "partials came first"
        driver.find_element(By.ID, "record").click()  # stop: the stream ends cleanly
        wait(driver, lambda d: d.find_element(By.ID, "live-status").text == "Stream finished.")
    finally:
        driver.quit()
    # the browser resampled the WAV to its device's rate and back to 16 kHz: one word may differ at most
    assert word_errors(recording.text, normalise(text)) <= 1, text
