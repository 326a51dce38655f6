"""The shared link as visitors meet it, in Debian's Chromium: reloads, closed tabs, fair shares, refused uploads,
phones, honest presets and what a visit costs over a metered tunnel."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from helpers import sample_scene
from pages import RUNNING, new_page, prepare_a_long_run, press, results_seed, slider, unfold, wait_until_idle

QUEUE_LINE = re.compile(r"Queue: (\d+) running, (\d+) waiting")


def queue_counts(page) -> tuple[int, int]:
    line = page.locator("section[data-testid='stSidebar']").get_by_text(QUEUE_LINE)
    line.wait_for(timeout=60_000)
    return tuple(int(n) for n in QUEUE_LINE.search(line.inner_text()).groups())


def wait_for_an_empty_queue(page, timeout_s: float = 60.0) -> None:
    """The queue line is a fragment of its own, polling every QUEUE_POLL_S (10 s; the `abandoning` server's: 1 s)."""
    deadline = time.monotonic() + timeout_s
    while queue_counts(page) != (0, 0):
        assert time.monotonic() < deadline, f"the queue still holds {queue_counts(page)}"
        page.wait_for_timeout(500)


@pytest.fixture
def abandoning(servers):
    """A server that cancels a job nobody polled for 5 s, and whose queue line polls every second (every 2 s while
    the queue is empty)."""
    return servers.get(ABANDON_S="5", QUEUE_POLL_S="1", QUEUE_IDLE_POLL_S="2")


@pytest.fixture
def one_queued_each(servers):
    return servers.get(MAX_QUEUED_PER_VISITOR="1")


def cancel_until_gone(page, timeout_s: float = 60.0) -> None:
    """Press Cancel by the click event alone until the page's run is gone. With three pages polling their runs on
    one core, Cancel is redrawn faster than Playwright's click finds it still, and an event sent to a button that
    was just replaced is lost (both seen in CI); pressing it again is harmless."""
    cancel = page.get_by_role("button", name="Cancel")
    deadline = time.monotonic() + timeout_s
    while cancel.count():
        assert time.monotonic() < deadline, "Cancel did not end the page's run"
        try:
            cancel.first.dispatch_event("click", timeout=2_000)
        except PlaywrightTimeout:  # gone since it was counted
            pass
        page.wait_for_timeout(1_000)


def test_a_reload_during_a_run_re_attaches_it_cancel_works_and_the_next_run_waits_for_nothing(server, page):
    page.goto(server)
    prepare_a_long_run(page)
    page.get_by_role("button", name="Generate").click()
    page.get_by_text(RUNNING).wait_for(timeout=120_000)
    assert "access=" in page.url, "the tab's address carries its visitor's identity"
    page.reload()
    page.get_by_text(RUNNING).wait_for(timeout=120_000)  # the same run, its progress back
    page.get_by_role("button", name="Cancel").click()
    page.get_by_text("Cancelled after step").wait_for(timeout=60_000)
    wait_until_idle(page)
    press(page, "Steps", "Home")
    press(page, "Resolution", "Home")
    page.get_by_role("button", name="Generate").click()
    results_seed(page, timeout=120_000)
    assert page.get_by_text("Waiting for its turn").count() == 0, "no orphan ahead of it"
    wait_for_an_empty_queue(page)


def test_a_closed_tabs_job_is_cancelled_after_abandon_s(abandoning, browser):
    url, state = abandoning.url, abandoning.state
    page = new_page(browser)
    page.goto(url)
    prepare_a_long_run(page)
    page.get_by_role("button", name="Generate").click()
    page.get_by_text(RUNNING).wait_for(timeout=120_000)
    page.context.close()
    other = new_page(browser)
    other.goto(url)
    wait_for_an_empty_queue(other)  # the closed tab's job was cancelled
    assert "abandoned: nobody looked at it" in (state / "streamlit.log").read_text()


def test_a_visitor_past_its_share_is_refused_with_the_reason_and_another_visitor_is_still_served(
        one_queued_each, browser):
    server = one_queued_each.url
    first = new_page(browser)
    first.goto(server)
    prepare_a_long_run(first)
    tabs = [new_page(browser) for _ in range(2)]  # the same visitor: the same address, so the same identity
    for tab in tabs:
        tab.goto(first.url)
        tab.get_by_text("Control image preview").wait_for(timeout=120_000)
    first.get_by_role("button", name="Generate").click()
    first.get_by_text(RUNNING).wait_for(timeout=120_000)
    tabs[0].get_by_role("button", name="Generate").click()
    tabs[0].get_by_text(re.compile(r"your run is number 1 in the queue")).wait_for(timeout=60_000)
    tabs[1].get_by_role("button", name="Generate").click()
    tabs[1].get_by_text(re.compile(r"You already have 2 runs on the way; each visitor may have 2 at once")).wait_for(
        timeout=60_000)
    stranger = new_page(browser)
    stranger.goto(server)
    stranger.get_by_text("Control image preview").wait_for(timeout=120_000)
    stranger.get_by_role("button", name="Generate").click()
    stranger.get_by_text(re.compile(r"your run is number 2 in the queue")).wait_for(timeout=60_000)
    for page in (first, tabs[0], stranger):  # the server idle again for the next test
        cancel_until_gone(page)
    one_queued_each.wait_until_idle(timeout_s=60)


def test_a_reload_restores_the_prompt_the_preset_the_sliders_and_the_picks(server, page):
    page.goto(server)
    page.get_by_text("Control image preview").wait_for(timeout=120_000)
    prompt = page.get_by_label("Prompt", exact=True)
    prompt.fill("a red barn at dusk")
    prompt.press("Control+Enter")
    wait_until_idle(page)
    page.get_by_text("Turbo", exact=True).click()
    wait_until_idle(page)
    press(page, "Canny low", "ArrowLeft", "ArrowLeft")
    pick = page.get_by_text(re.compile(r"^#1 square"))
    unfold(page, pick)
    pick.click()
    wait_until_idle(page)
    page.reload()
    page.get_by_text("Control image preview").wait_for(timeout=120_000)
    wait_until_idle(page)
    assert page.get_by_label("Prompt", exact=True).input_value() == "a red barn at dusk"
    assert page.get_by_role("radio", name="Turbo").is_checked()
    unfold(page, slider(page, "Canny low"))
    assert slider(page, "Canny low").input_value() == "98"
    unfold(page, page.get_by_role("checkbox", name=re.compile(r"^#1 square")))
    assert page.get_by_role("checkbox", name=re.compile(r"^#1 square")).is_checked()


def test_a_refused_upload_says_why_in_sight_and_generate_waits_for_a_usable_one(server, page, tmp_path):
    big = tmp_path / "holiday.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(25 * 2**20))  # 25 MB, over MAX_UPLOAD_MB's 20
    page.goto(server)
    page.get_by_text("Control image preview").wait_for(timeout=120_000)
    wait_until_idle(page)
    page.locator("input[type='file']").first.set_input_files(str(big))
    too_big = page.get_by_text("'holiday.png' cannot be used: It is 25.0 MB, and this server takes photos up to 20 MB")
    too_big.wait_for(timeout=60_000)
    wait_until_idle(page)
    assert too_big.is_visible() and page.get_by_role("button", name="Generate").is_disabled(), \
        "no run paints the sample instead"
    assert page.get_by_text("…or a sample image").count() == 0
    notes = tmp_path / "notes.txt"
    notes.write_text("these are my notes, not a picture")
    page.locator("input[type='file']").first.set_input_files(str(notes))
    reason = page.get_by_text("'notes.txt' cannot be used: This file is not an image that can be read")
    reason.wait_for(timeout=60_000)
    wait_until_idle(page)
    assert reason.is_visible() and page.get_by_role("button", name="Generate").is_disabled()
    photo = tmp_path / "scene.png"
    sample_scene((256, 192)).save(photo)
    page.locator("input[type='file']").first.set_input_files(str(photo))
    page.get_by_text(re.compile(r"Control image preview, \d+x\d+")).wait_for(timeout=60_000)
    wait_until_idle(page)
    assert page.get_by_role("button", name="Generate").is_enabled() and reason.count() == 0


def test_on_a_phone_the_page_is_short_and_the_result_comes_into_sight_when_the_run_ends(server, browser):
    page = browser.new_context(viewport={"width": 390, "height": 844}, accept_downloads=True).new_page()
    page.goto(server)
    page.get_by_text("Control image preview").wait_for(timeout=120_000)
    wait_until_idle(page)
    height = page.evaluate("document.querySelector(\"[data-testid='stMain']\").scrollHeight")  # the sidebar apart
    assert height <= 3 * 844, f"{height} px: {height / 844:.2f} screens before any result"
    preset = page.get_by_role("radiogroup").filter(has_text="Turbo").bounding_box()
    generate = page.get_by_role("button", name="Generate").bounding_box()
    distance = abs(generate["y"] + generate["height"] - preset["y"])
    print(f"phone 390x844: {height} px before a result ({height / 844:.2f} screens); the preset's top to "
          f"Generate's bottom {distance:.0f} px")
    assert distance <= 844, f"the preset and Generate are {distance:.0f} px apart, more than a screen"
    press(page, "Steps", "Home", "ArrowRight")
    press(page, "Resolution", "Home")
    page.get_by_role("button", name="Generate").click()
    results_seed(page, timeout=120_000)
    wait_until_idle(page)
    picture = page.locator("[data-testid='stImage']").filter(has_text="edge fidelity").first
    deadline = time.monotonic() + 10  # a smooth scroll takes a moment
    while (box := picture.bounding_box()) is None or not (box["y"] < 844 and box["y"] + box["height"] > 0):
        assert time.monotonic() < deadline, box
        time.sleep(0.1)


def test_on_a_phone_a_new_photo_starts_with_no_picks_and_a_flat_32x32_photo_warns(server, browser, tmp_path):
    from PIL import Image

    page = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
    page.goto(server)
    page.get_by_text("Control image preview").wait_for(timeout=120_000)
    pick = page.get_by_role("checkbox", name=re.compile(r"^#1 square"))
    unfold(page, pick)
    page.get_by_text(re.compile(r"^#1 square")).click()
    wait_until_idle(page)
    assert pick.is_checked()
    photo = tmp_path / "scene.png"
    sample_scene((256, 192)).save(photo)  # the same shapes, so the same object ids: they name new objects now
    page.locator("input[type='file']").first.set_input_files(str(photo))
    page.get_by_text(re.compile(r"Control image preview, \d+x\d+")).wait_for(timeout=60_000)
    wait_until_idle(page)
    unfold(page, pick)
    assert not pick.is_checked() and page.get_by_text("Your photo, as it is placed").is_visible()
    flat = tmp_path / "flat.png"
    Image.new("RGB", (32, 32), (128, 128, 128)).save(flat)
    page.locator("input[type='file']").first.set_input_files(str(flat))
    warning = page.get_by_text(re.compile("^The control image is nearly empty"))
    warning.wait_for(timeout=60_000)
    warning.scroll_into_view_if_needed()
    assert warning.is_visible()


def test_a_preset_changed_by_hand_says_custom(server, page):
    page.goto(server)
    page.get_by_text("Control image preview").wait_for(timeout=120_000)
    page.get_by_text("Fast", exact=True).click()
    wait_until_idle(page)
    press(page, "Steps", "ArrowRight")  # 4 -> 5
    assert page.get_by_role("radio", name="Custom").is_checked()
    page.get_by_text(re.compile("Custom: your own scheduler, steps and CFG, with the Fast preset's")).wait_for(
        timeout=30_000)


def visit_bytes(page) -> dict[str, int]:
    """Count what the server sends this page from now on: each HTTP answer (headers and body as they crossed the
    wire) and each websocket frame; Streamlit's own static files (cached after the first visit) apart. And what
    the page sends up (`up`: requests with their bodies, the upload too, and websocket frames)."""
    requests, frames, sent = [], [], []
    page.on("requestfinished", lambda request: requests.append(request))
    page.on("websocket", lambda ws: (ws.on("framereceived", lambda payload: frames.append(len(payload))),
                                     ws.on("framesent", lambda payload: sent.append(len(payload)))))

    def count() -> dict[str, int]:
        totals = {"static": 0, "media": 0, "other": 0, "websocket": sum(frames), "up": sum(sent)}
        for request in requests:
            sizes = request.sizes()
            kind = "static" if "/static/" in request.url else "media" if "/media/" in request.url else "other"
            totals[kind] += sizes["responseBodySize"] + sizes["responseHeadersSize"]
            totals["up"] += sizes["requestBodySize"] + sizes["requestHeadersSize"]
        return totals

    return count


def test_a_visit_costs_at_most_600_kb_and_each_further_image_at_most_150_kb(server, page, tmp_path):
    import importlib.util
    from pathlib import Path

    bus = Path(importlib.util.find_spec("ultralytics").submodule_search_locations[0]) / "assets" / "bus.jpg"
    count = visit_bytes(page)
    page.goto(server)
    page.get_by_text("Control image preview").wait_for(timeout=120_000)
    page.locator("input[type='file']").first.set_input_files(str(bus))
    page.get_by_text(re.compile(r"Control image preview, 512x\d+")).wait_for(timeout=60_000)
    page.get_by_text("Turbo", exact=True).click()
    wait_until_idle(page)
    page.get_by_role("button", name="Generate").click()
    first = results_seed(page, timeout=120_000)
    wait_until_idle(page, quiet_s=2.0)
    visit = count()
    page.get_by_role("button", name="Generate").click()
    results_seed(page, other_than=first, timeout=120_000)
    wait_until_idle(page, quiet_s=2.0)
    after = count()
    sent = {kind: after[kind] - visit[kind] for kind in visit}
    costs = f"visit {visit}, one more image {sent}"
    print(costs)
    assert visit["media"] + visit["other"] + visit["websocket"] <= 600_000, costs
    assert sent["media"] + sent["other"] + sent["websocket"] <= 150_000, costs
    assert visit["static"] <= 3_000_000, "Streamlit's own scripts travel compressed (6.7 MB as they are)"


def test_an_idle_tab_sends_at_most_100_kb_an_hour_upstream(abandoning, page):
    """An open tab with nothing running polls only the queue line, at QUEUE_IDLE_POLL_S (this server: 2 s; by
    default 300 s). Each poll sends the page's widget states up and gets the line back: counted here per poll and
    scaled to an hour at the default pace."""
    from studio.core.settings import Settings

    sent, received = [], []
    page.on("websocket", lambda ws: (ws.on("framesent", lambda payload: sent.append(len(payload))),
                                     ws.on("framereceived", lambda payload: received.append(len(payload)))))
    page.goto(abandoning.url)
    page.get_by_text("Control image preview").wait_for(timeout=120_000)
    wait_until_idle(page, quiet_s=3.0)
    first_up, first_down, polls_from = sum(sent), sum(received), len(sent)
    page.wait_for_timeout(8_000)
    polls = len(sent) - polls_from
    up, down = sum(sent) - first_up, sum(received) - first_down
    assert 3 <= polls <= 5, f"{polls} messages up in 8 s: the line polls every 2 s while the queue is empty"
    per_hour = 3600 / Settings.queue_idle_poll_s
    costs = f"{polls} polls: {up / polls:.0f} B up and {down / polls:.0f} B down each"
    print(costs, f"; an hour idle at the default pace: {up / polls * per_hour / 1000:.0f} KB up, "
                 f"{down / polls * per_hour / 1000:.0f} KB down")
    assert up / polls * per_hour <= 100_000, costs
