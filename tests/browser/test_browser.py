"""End to end in a real browser: Debian's Chromium driven by Playwright against `streamlit run app.py`."""

from __future__ import annotations

import re
import time

from studio.core.run_card import read_run_card

from helpers import ROOT, sample_scene
from pages import (ARTIFACTS, RUNNING, detector_runs, downloaded_card, new_page, prepare_a_long_run, press,
                   results_seed, slider, wait_until_idle)


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
    page.get_by_text("Control image preview").wait_for(timeout=120_000)
    wait_until_idle(page)  # the page drawn, as a person sees it before choosing a photo

    page.locator("input[type='file']").first.set_input_files(str(photo))
    page.get_by_role("tab", name="Detections (2)").wait_for(timeout=60_000)
    prompt = page.get_by_label("Prompt", exact=True)
    prompt.fill("a watercolor of a sun over a red house")
    prompt.press("Control+Enter")
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("Results (seed").wait_for(timeout=180_000)
    assert page.get_by_text(re.compile(r"edge fidelity -?\d\.\d\d")).count() >= 1

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
    page.locator("input[type='file']").first.set_input_files(str(fake))
    page.get_by_text("not an image that can be read").wait_for(timeout=60_000)
    assert page.locator("[data-testid='stException']").count() == 0
    wait_until_idle(page)
    page.screenshot(path=str(ARTIFACTS / "app-bad-upload.png"), full_page=True)


def test_moving_sliders_during_a_run_neither_kills_it_nor_changes_it(server, page, tmp_path):
    page.goto(server)
    prepare_a_long_run(page)
    page.get_by_role("button", name="Generate").click()
    page.get_by_text(RUNNING).wait_for(timeout=120_000)
    press(page, "Guidance scale", "ArrowRight")  # 7.5 -> 8.0
    press(page, "Canny low", "ArrowRight")  # 100 -> 101
    assert page.get_by_text("Denoising step").count() == 1, "the run goes on after the page reran"
    first = results_seed(page)
    card = downloaded_card(page, tmp_path, "first.png")
    assert card["request"]["guidance_scale"] == 7.5 and card["request"]["canny_low"] == 100
    assert card["steps_done"] == 150
    press(page, "Steps", "Home")  # a quick second run
    page.get_by_role("button", name="Generate").click()
    results_seed(page, other_than=first)
    card = downloaded_card(page, tmp_path, "second.png")
    assert card["request"]["guidance_scale"] == 8.0 and card["request"]["canny_low"] == 101


def test_cancel_says_so_once_and_the_page_is_ready_at_once(server, page):
    page.goto(server)
    prepare_a_long_run(page)
    page.get_by_role("button", name="Generate").click()
    page.get_by_text(RUNNING).wait_for(timeout=120_000)
    page.get_by_role("button", name="Cancel").click()
    page.get_by_text("Cancelled after step").wait_for(timeout=60_000)
    wait_until_idle(page)
    assert page.get_by_text("Cancelled after step").count() == 1
    assert page.get_by_role("button", name="Cancel").count() == 0
    assert page.get_by_text("Control image preview").is_visible()
    assert page.get_by_role("tab", name=re.compile(r"^Detections \(\d+\)$")).is_visible()
    assert page.get_by_text("Results (seed").count() == 0 and page.get_by_text("Another").count() == 0
    press(page, "Steps", "Home")  # 1 step
    page.get_by_role("button", name="Generate").click()
    results_seed(page)
    assert page.get_by_text("Cancelled after step").count() == 0, "the notice is shown once"


def test_two_visitors_generate_at_once_and_the_second_sees_its_place(server, browser, tmp_path):
    first, second = new_page(browser), new_page(browser)
    for page in (first, second):
        page.goto(server)
    prepare_a_long_run(first)  # long enough for the second to queue behind it
    second.get_by_text("Control image preview").wait_for(timeout=120_000)
    press(second, "Resolution", "ArrowLeft", "ArrowLeft", "ArrowLeft", "ArrowLeft")
    first.get_by_role("button", name="Generate").click()
    first.get_by_text(RUNNING).wait_for(timeout=120_000)
    second.get_by_role("button", name="Generate").click()
    second.get_by_text(re.compile(r"your run is number 1 in the queue; it starts in about \d+ s")).wait_for(
        timeout=30_000)
    seeds = [results_seed(page) for page in (first, second)]
    assert seeds[0] != seeds[1]
    cards = [downloaded_card(page, tmp_path, f"{i}.png") for i, page in enumerate((first, second))]
    assert [str(card["seed"]) for card in cards] == seeds
    assert [card["steps_done"] for card in cards] == [150, 20]


def test_a_canny_slider_rebuilds_the_control_preview_without_the_detector(served, page):
    url, state = served.url, served.state
    page.goto(url)
    preview = page.locator("[data-testid='stImage']").filter(has_text="Control image preview").locator("img")
    preview.wait_for(timeout=120_000)
    wait_until_idle(page)
    before, runs = preview.get_attribute("src"), detector_runs(state)
    assert runs >= 1
    press(page, "Canny high", "Home")  # 200 -> 1: many more edges
    page.wait_for_function("([el, old]) => el.getAttribute('src') !== old", arg=[preview.element_handle(), before],
                           timeout=30_000)
    press(page, "Canny low", "End")
    assert detector_runs(state) == runs, "only the control image was rebuilt"
    press(page, "Confidence", "ArrowRight")  # a detection setting: the detector must run again
    assert detector_runs(state) == runs + 1


def test_repainting_the_objects_shows_the_mask_over_the_preview_and_the_result(server, page):
    page.goto(server)
    page.get_by_text("Control image preview").first.wait_for(timeout=120_000)
    page.locator("[data-testid='stSelectbox']").filter(has_text="What to repaint").click()
    page.get_by_role("option", name="Only the chosen objects").click()
    page.get_by_text("tinted red: what will be repainted").wait_for(timeout=60_000)
    wait_until_idle(page)
    preview = re.search(r"what will be repainted \((\d+)% of the picture\)", page.get_by_text(
        "tinted red: what will be repainted").inner_text()).group(1)
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("Results (seed").wait_for(timeout=180_000)
    repainted = page.get_by_text(re.compile(r"Repainted \(\d+% of the picture, tinted red, from (seg|box) masks\)"))
    repainted.wait_for(timeout=30_000)
    run = re.search(r"Repainted \((\d+)%", repainted.inner_text()).group(1)
    assert run == preview, "the preview's mask is the run's"
    assert page.get_by_text(re.compile(r"edge fidelity -?\d\.\d\d")).count() >= 1  # the output is there
    ARTIFACTS.mkdir(exist_ok=True)
    wait_until_idle(page)
    page.screenshot(path=str(ARTIFACTS / "app-repaint-objects.png"), full_page=True)


def test_an_output_too_large_disables_generate_with_its_reason_and_keeps_the_settings(server, page):
    page.goto(server)
    page.get_by_text("Control image preview").wait_for(timeout=120_000)
    press(page, "Steps", "Home")  # a setting changed before: it must survive the refusal
    press(page, "Resolution", "End")  # 2048 on the 512x384 sample: 2728x2048, over MAX_SIDE
    wait_until_idle(page)
    page.get_by_text("The output would be 2728x2048 pixels").first.wait_for(timeout=60_000)
    assert page.get_by_role("button", name="Generate").is_disabled()
    assert page.get_by_text("Something went wrong").count() == 0
    assert (slider(page, "Resolution").input_value(), slider(page, "Steps").input_value()) == ("2048", "1")
    press(page, "Resolution", "Home")
    wait_until_idle(page)
    assert page.get_by_role("button", name="Generate").is_enabled()
    assert page.get_by_text("The output would be").count() == 0


def test_one_of_two_squares_picked_with_a_prompt_is_the_only_object_in_the_card_and_the_zip(server, page, tmp_path):
    import json
    import zipfile

    page.goto(server)
    page.get_by_text("Control image preview").first.wait_for(timeout=120_000)
    wait_until_idle(page)  # a dropdown opened during a rerun closes again
    page.locator("[data-testid='stSelectbox']").filter(has_text="What to repaint").click()
    page.get_by_role("option", name="Each chosen object in detail").click()
    wait_until_idle(page)
    page.get_by_text(re.compile(r"Objects \(4\): pick them one by one")).click()
    page.get_by_text("#3 square", exact=False).first.wait_for(timeout=30_000)
    pick = page.locator("[data-testid='stCheckbox']").filter(has_text="#3 square")
    pick.click()
    wait_until_idle(page)
    if not pick.locator("input").is_checked():  # a click that landed while the page was redrawn (a loaded CI)
        pick.click()
        wait_until_idle(page)
    assert pick.locator("input").is_checked()
    prompt = page.get_by_placeholder("its own prompt (empty: the main prompt)").nth(3)
    prompt.fill("a red box")
    prompt.press("Enter")
    wait_until_idle(page)
    page.get_by_text(re.compile(r"#3 square · \d+x\d+")).wait_for(timeout=60_000)  # the crop, before the run
    press(page, "Steps", "Home", "ArrowRight")
    wait_until_idle(page)
    page.get_by_role("button", name="Generate").click()
    results_seed(page)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download all (zip)").click()
    saved = tmp_path / "all.zip"
    download.value.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        names = archive.namelist()
        card = json.loads(archive.read(next(n for n in names if n.startswith("run_card"))))
    assert sorted(n.split("-")[0] + "-" + n.split("-")[1] for n in names if n.startswith("object")) == \
        ["object3-crop", "object3-mask"]
    assert [(e["id"], e["class"], e["prompt"]) for e in card["objects"]] == [(3, "square", "a red box")]
    assert card["request"]["object_prompts"] == {"3": "a red box"} and card["request"]["objects"] == [3]
    ARTIFACTS.mkdir(exist_ok=True)
    wait_until_idle(page)
    page.screenshot(path=str(ARTIFACTS / "app-detail-one-object.png"), full_page=True)


def test_an_api_job_and_a_page_visitor_wait_in_one_queue_and_see_each_others_places(server, page):
    import json

    import requests

    def submit(steps: int) -> str:
        with open(ROOT / "assets" / "sample_scene.png", "rb") as photo:
            answer = requests.post(f"{server}/api/v1/jobs", files={"image": photo}, timeout=60,
                                   data={"request": json.dumps({"steps": steps, "resolution": 256, "seed": 1})})
        assert answer.status_code == 202, answer.text
        return answer.json()["id"]

    page.goto(server)
    page.get_by_text("Control image preview").first.wait_for(timeout=120_000)
    press(page, "Steps", "Home", "ArrowRight")
    running = submit(150)
    deadline = time.monotonic() + 120
    while requests.get(f"{server}/api/v1/jobs/{running}", timeout=30).json()["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    page.get_by_role("button", name="Generate").click()
    page.get_by_text(re.compile(r"your run is number 1 in the queue")).wait_for(timeout=60_000)
    after = submit(2)
    assert requests.get(f"{server}/api/v1/jobs/{after}", timeout=30).json()["position"] == 2
    for job in (running, after):
        requests.delete(f"{server}/api/v1/jobs/{job}", timeout=30)
    results_seed(page)  # the visitor's run goes next and ends


def test_with_a_password_the_page_signs_in_uploads_and_shows_its_pictures_through_the_gate(
        signed, browser, tmp_path):
    page = new_page(browser)
    refused = []
    page.on("response", lambda r: refused.append(r.url) if r.status == 403 else None)
    page.goto(signed.url)
    page.get_by_label("Password", exact=True).fill(signed.env["APP_PASSWORD"])
    page.get_by_role("button", name="Enter").click()
    page.get_by_text("Control image preview").first.wait_for(timeout=120_000)
    photo = tmp_path / "two.png"
    sample_scene((256, 192)).crop((0, 64, 256, 192)).save(photo)  # another picture than the page's sample
    page.locator("input[type='file']").first.set_input_files(str(photo))
    page.get_by_text(re.compile(r"Control image preview, \d+x\d+")).first.wait_for(timeout=60_000)
    page.get_by_text("two.png").first.wait_for(timeout=60_000)  # the upload passed the gate
    wait_until_idle(page)  # the upload's own rerun ended: the keys below start the next one
    press(page, "Steps", "Home", "ArrowRight")
    page.get_by_role("button", name="Generate").click()
    results_seed(page)
    wait_until_idle(page)
    widths = page.locator("[data-testid='stImage'] img").evaluate_all("images => images.map(i => i.naturalWidth)")
    assert widths and all(width > 0 for width in widths), widths  # every picture came through /media
    assert refused == [], refused
