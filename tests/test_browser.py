"""The web page in a real headless Chromium (Debian's, driven through Debian's chromedriver)."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_server import running_server, shared_tiny_run

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1100,800",
)  # fmt: skip

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromedriver: apt-get install chromium chromium-driver",
)


@contextmanager
def chromium(tmp_path: Path, *, network_log: bool = False):
    """A headless Chromium with its own profile under tmp_path; `network_log` keeps the
    DevTools performance log (every request) for `driver.get_log("performance")`."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    if network_log:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    # An explicit driver path: selenium-manager then has nothing to look up or download.
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(tmp_path):
    with chromium(tmp_path) as driver:
        yield driver


def test_the_page_streams_generated_text(browser, tmp_path, tmp_path_factory, shakespeare_text):
    run = shared_tiny_run(tmp_path_factory, shakespeare_text)

    def element(element_id: str):
        return browser.find_element(By.ID, element_id)

    def fill(element_id: str, value: str) -> None:
        element(element_id).clear()
        element(element_id).send_keys(value)

    def generated() -> str:
        return element("generated").get_attribute("textContent")

    with running_server(run, "--max-length", "100000", log=tmp_path / "server.log") as (_, url):
        browser.get(url)
        assert browser.title == "char-rnn"
        WebDriverWait(browser, 30).until(lambda _: "gru" in element("model").text.lower())

        # A long text: characters show up while the generation is still running; Stop ends it.
        fill("start", "ROMEO:")
        fill("length", "100000")
        element("generate").click()
        WebDriverWait(browser, 60, poll_frequency=0.02).until(
            lambda _: len(generated()) > 0 and element("status").text.startswith("generating")
        )
        assert element("generate").get_attribute("disabled") is not None
        element("stop").click()
        WebDriverWait(browser, 30).until(lambda _: element("status").text.startswith("stopped after"))
        assert 0 < len(generated()) < 100000

        # A short text with a seed: the page shows exactly what the API gives for it.
        fill("length", "300")
        fill("seed", "5")
        fill("temperature", "0.8")
        element("generate").click()
        WebDriverWait(browser, 60).until(lambda _: element("status").text == "done: 300 characters")
        assert element("prompt").get_attribute("textContent") == "ROMEO:"
        shown = generated()
        browser.save_screenshot(str(tmp_path / "page.png"))

        body = {"start": "ROMEO:", "length": 300, "seed": 5, "temperature": 0.8}
        expected = httpx.post(url + "api/generate", json=body, timeout=60).json()["text"]

        # A stop string ("\n" typed means a newline): the text ends just before it.
        fill("stop_at", "\\n")
        element("generate").click()
        WebDriverWait(browser, 60).until(lambda _: element("status").text.startswith("done: "))
        stopped = generated()
        assert element("status").text == f'done: {len(stopped)} characters (stopped at "\\n")'
    assert "ROMEO:" + shown == expected
    assert stopped == shown[: shown.index("\n")]
    assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
