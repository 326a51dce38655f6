"""End to end in a real browser: Debian's Chromium driven by Playwright against `streamlit run app.py`."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

import launch
from conftest import ROOT
from run_card import read_run_card

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() and not shutil.which("chromium"),
                                reason="needs Debian's chromium (make test installs it)")


@pytest.fixture
def server(tmp_path, monkeypatch, model_cache):
    monkeypatch.setenv("APP_CACHE_DIR", str(model_cache))
    monkeypatch.setenv("DEVICE", "cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state = tmp_path / "launch"
    launched = launch.start(port, "none", "tiny", state_dir=state, quiet=True)
    yield launched.local_url
    launch.stop(state)


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1800}, accept_downloads=True)
        yield context.new_page()
        browser.close()


def wait_until_idle(page) -> None:
    """Streamlit shows its running indicator while a script runs; stale elements linger until it ends."""
    page.wait_for_timeout(1500)
    page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden", timeout=120_000)


def test_upload_prompt_generate_download_and_a_friendly_error(server, page, tmp_path):
    from PIL import Image, ImageDraw

    photo = tmp_path / "shapes.png"
    image = Image.new("RGB", (384, 256), (40, 60, 90))
    draw = ImageDraw.Draw(image)
    draw.ellipse((30, 40, 130, 140), fill=(240, 200, 60))
    draw.rectangle((220, 90, 330, 200), fill=(200, 70, 60))
    image.save(photo)

    page.goto(server)
    page.get_by_text("YOLO ControlNet Studio").first.wait_for(timeout=120_000)
    page.get_by_text("Attention:").wait_for(timeout=120_000)
    assert "sdpa" in page.locator("section[data-testid='stSidebar']").inner_text()

    page.locator("input[type='file']").set_input_files(str(photo))
    page.get_by_text("2 detections").wait_for(timeout=60_000)
    prompt = page.get_by_label("Prompt", exact=True)
    prompt.fill("a watercolor of a sun over a red house")
    prompt.press("Control+Enter")
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("Results (seed").wait_for(timeout=180_000)
    assert page.get_by_text("edge fidelity F1").count() >= 1

    with page.expect_download() as download:
        page.get_by_role("button", name="Download PNG").click()
    saved = tmp_path / "result.png"
    download.value.save_as(saved)
    card = read_run_card(saved.read_bytes())
    assert card["request"]["prompt"] == "a watercolor of a sun over a red house"
    assert card["attention"]["chosen"] == "sdpa" and card["models"]["set"] == "tiny"

    ARTIFACTS.mkdir(exist_ok=True)
    wait_until_idle(page)
    page.screenshot(path=str(ARTIFACTS / "app-after-generate.png"), full_page=True)

    fake = tmp_path / "notes.png"
    fake.write_text("these are my notes, not a picture")
    page.locator("input[type='file']").set_input_files(str(fake))
    page.get_by_text("not an image that can be read").wait_for(timeout=60_000)
    assert page.locator("[data-testid='stException']").count() == 0
    wait_until_idle(page)
    page.screenshot(path=str(ARTIFACTS / "app-bad-upload.png"), full_page=True)


def test_cancel_stops_a_long_run_and_the_next_run_works(server, page):
    page.goto(server)
    page.get_by_text("2 detections").or_(page.get_by_text("4 detections")).first.wait_for(timeout=120_000)
    steps = page.locator("[data-testid='stSlider']").filter(has_text="Steps").get_by_role("slider")
    steps.focus()
    steps.press("End")  # 100 steps: long enough to cancel on the CPU
    page.get_by_text("100", exact=True).first.wait_for(timeout=30_000)
    wait_until_idle(page)
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("Denoising step 2 of 100").wait_for(state="attached", timeout=120_000)
    page.get_by_role("button", name="Cancel").click()
    page.get_by_text("Cancelled after step").wait_for(timeout=60_000)
    wait_until_idle(page)
    assert page.get_by_text("Results (seed").count() == 0
    steps.focus()
    steps.press("Home")  # 1 step
    wait_until_idle(page)
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("Results (seed").wait_for(timeout=120_000)
