"""What the browser tests do to a page: open one, wait for Streamlit to settle, move sliders, read results."""

from __future__ import annotations

import re
import time
from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeout

from studio.core.run_card import read_run_card

from helpers import ROOT

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
PASSWORD = "open sesame"  # the password of the `signed` server
RUNNING = re.compile(r"Denoising step \d+ of 150")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  # two visitors are two pages of one browser: keep the one behind polling its job
                  "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                  "--disable-backgrounding-occluded-windows"]


# The page's root element while a script or fragment runs (its script state is "notRunning" between runs).
A_RUN_GOING_ON = "[data-testid='stApp']:not([data-test-script-state='notRunning'])"


def new_page(browser):
    """A new visitor: a browser context of its own (its own tab address, so its own identity on the server)."""
    return browser.new_context(viewport={"width": 1400, "height": 1800}, accept_downloads=True).new_page()


def script_state(page) -> str:
    """The page's script and connection states as its root element shows them, for a failure's message."""
    root = page.locator("[data-testid='stApp']")
    return (f"script {root.get_attribute('data-test-script-state')}, "
            f"connection {root.get_attribute('data-test-connection-state')}")


def wait_until_idle(page, quiet_s: float = 1.0, timeout_s: float = 120.0) -> None:
    """Streamlit shows its running indicator while a script runs (one longer than about half a second), and stale
    elements linger until it ends; a rerun a click caused may start a moment later. Idle: the indicator hidden for
    `quiet_s` in a row, and no run going on (the page's root element says so: `data-test-script-state`)."""
    status = page.locator("[data-testid='stStatusWidget']")
    running = page.locator(A_RUN_GOING_ON)
    deadline = quiet_from = time.monotonic()
    deadline += timeout_s
    while time.monotonic() - quiet_from < quiet_s or running.count():
        assert time.monotonic() < deadline, f"the page kept running ({script_state(page)})"
        if status.is_visible():
            quiet_from = time.monotonic()
        page.wait_for_timeout(100)


# Counts the runs the page starts (its root element's script state turning to "running"), however short.
COUNT_RUNS = """() => {
    if (window.runsStarted !== undefined) return window.runsStarted;
    window.runsStarted = 0;
    new MutationObserver(changes => changes.forEach(change => {
        if (change.target.getAttribute("data-test-script-state") === "running") window.runsStarted += 1;
    })).observe(document.querySelector("[data-testid='stApp']"),
                {attributes: true, attributeFilter: ["data-test-script-state"]});
    return 0;
}"""


def rerun_done(page, runs_before: int, quiet_s: float = 0.3) -> None:
    """After a change that reruns the page: its rerun started (counted, so a quick one is not missed; a change
    that moved nothing starts none, hence a second's wait at most) and every run ended `quiet_s` ago."""
    try:
        page.wait_for_function("n => window.runsStarted > n", arg=runs_before, timeout=1_000, polling=20)
    except PlaywrightTimeout:
        pass
    wait_quiet(page, quiet_s)


def wait_quiet(page, quiet_s: float, timeout_s: float = 120.0) -> None:
    """No run (script or fragment) for `quiet_s` in a row. Short spans only: while a job runs, its view reruns
    twice a second, which `wait_until_idle`'s indicator ignores."""
    running = page.locator(A_RUN_GOING_ON)
    deadline = quiet_from = time.monotonic()
    deadline += timeout_s
    while time.monotonic() - quiet_from < quiet_s:
        assert time.monotonic() < deadline, f"the page kept running ({script_state(page)})"
        if running.count():
            quiet_from = time.monotonic()
        page.wait_for_timeout(50)


def slider(page, label: str):
    return page.get_by_role("slider", name=re.compile("^" + re.escape(label)))


def unfold(page, element) -> None:
    """Open the folded panels (expanders), if `element` is hidden in one: a folded panel may not draw its content."""
    if element.count() and element.first.is_visible():
        return
    folded = page.locator("[data-testid='stMain'] details:not([open]) > summary")
    for _ in range(20):
        if not folded.count():
            break
        # the click event alone: Playwright's click first waits for the page to stop moving (the panel above is
        # still unfolding), a second a panel
        folded.first.dispatch_event("click")
    element.first.wait_for(state="visible", timeout=30_000)


def press(page, label: str, *keys: str) -> None:
    handle = slider(page, label)
    unfold(page, handle)
    handle.focus()
    runs = page.evaluate(COUNT_RUNS)
    for key in keys:
        handle.press(key)
    rerun_done(page, runs)


def prepare_a_long_run(page) -> None:
    """150 steps at 384 px: long enough to act while it runs. At 256 px the tiny models now take 3 s, less than
    two slider presses or a second visitor's queueing take on a busy CI core (seen failing); at 512 px a run took
    a minute there."""
    page.get_by_text("Control image preview").wait_for(timeout=120_000)
    press(page, "Resolution", "ArrowLeft", "ArrowLeft")
    press(page, "Steps", "End")
    assert slider(page, "Steps").input_value() == "150"
    assert slider(page, "Resolution").input_value() == "384"


def results_seed(page, other_than: str | None = None, timeout: int = 240_000) -> str:
    """The seed in the results heading, once it shows one (other than `other_than`)."""
    pattern = re.compile(r"Results \(seed (\d+)\)")
    heading = page.get_by_text(pattern)
    deadline = time.monotonic() + timeout / 1000
    while True:
        if heading.count():
            seed = pattern.search(heading.first.inner_text()).group(1)
            if seed != other_than:
                return seed
        assert time.monotonic() < deadline, "no new results"
        page.wait_for_timeout(250)


def downloaded_card(page, tmp_path, name: str) -> dict:
    with page.expect_download() as download:
        page.get_by_role("button", name="Download PNG").first.click()
    saved = tmp_path / name
    download.value.save_as(saved)
    return read_run_card(saved.read_bytes())


def detector_runs(state: Path) -> int:
    """How often the server ran the detector, as its log says."""
    return (state / "streamlit.log").read_text().count("detector ran on")


