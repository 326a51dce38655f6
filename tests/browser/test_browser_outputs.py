"""Nothing made is lost, in Debian's Chromium: a picture made on the page is in the outputs folder and in its
visitor's history after a reload (and not in another visitor's), and a batch of photos says "n of 3" and gives
one zip."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

from PIL import Image

from studio.core.run_card import PARAMETERS_KEY, RUN_CARD_KEY

from helpers import sample_scene
from pages import PASSWORD, new_page, press, results_seed, wait_until_idle


def signed_in(browser, url: str):
    """A new visitor: a browser of its own, signed in (so a token, an identity, of its own)."""
    page = new_page(browser)
    page.goto(url)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Enter").click()
    page.get_by_text("Control image preview").first.wait_for(timeout=120_000)
    return page


def test_a_picture_made_on_the_page_is_in_its_visitors_history_after_a_reload_and_in_no_one_elses(
        signed, browser):
    url, outputs = signed.url, Path(signed.env["OUTPUTS_DIR"])
    earlier = set(outputs.glob("*/*-result-*.png"))  # other tests' pictures on this shared server
    first = signed_in(browser, url)
    press(first, "Steps", "Home", "ArrowRight")
    press(first, "Resolution", "Home")
    first.get_by_role("button", name="Generate").click()
    seed = results_seed(first)
    saved = list(set(outputs.glob("*/*-result-*.png")) - earlier)
    assert len(saved) == 1 and f"-result-{seed}-" in saved[0].name
    assert {RUN_CARD_KEY, PARAMETERS_KEY} <= set(Image.open(saved[0]).text)

    first.reload()
    history = first.get_by_text("History (the latest 1 run)")
    history.wait_for(timeout=120_000)
    assert first.get_by_text(re.compile(r"Results \(seed")).count() == 0, "the reload started a new page"
    history.click()
    thumb = first.get_by_text(f"seed {seed}", exact=True)
    thumb.wait_for(timeout=30_000)
    panel = first.locator("[data-testid='stExpander']", has_text="History (the latest 1 run)")
    widths = panel.locator("[data-testid='stImage'] img").evaluate_all("images => images.map(i => i.naturalWidth)")
    assert widths == [min(Image.open(saved[0]).width, 160)], widths  # the thumbnail came through the gate
    panel.get_by_role("button", name="Open", exact=True).click()
    dialog = first.get_by_role("dialog")
    dialog.get_by_text(f"Seed: {seed}").wait_for(timeout=30_000)
    dialog.get_by_role("button", name="Reuse these settings").click()
    dialog.wait_for(state="detached", timeout=30_000)

    second = signed_in(browser, url)
    wait_until_idle(second)
    assert second.get_by_text("History (").count() == 0, "another visitor sees none of it"


def test_a_batch_of_photos_says_how_far_it_got_and_gives_one_zip(server, page, tmp_path):
    photos = []
    for i in range(3):
        photos.append(tmp_path / f"photo{i}.png")
        sample_scene((128, 96)).rotate(15 * i).save(photos[-1])
    page.goto(server)
    page.get_by_text("Control image preview").wait_for(timeout=120_000)
    panel = page.locator("[data-testid='stExpander']", has_text="Many photos at once (batch)")
    panel.locator("summary").click()  # before `press` unfolds the other panels
    press(page, "Resolution", "Home")
    panel.locator("input[type='file']").set_input_files([str(photo) for photo in photos])
    panel.get_by_text("photo2.png").wait_for(timeout=60_000)
    panel.get_by_role("button", name="Start the batch").click()
    panel.get_by_text(re.compile(r"^[0-2] of 3")).first.wait_for(timeout=120_000)
    panel.get_by_text("Done: 3 of 3 photos made.").wait_for(timeout=300_000)
    with page.expect_download() as download:
        panel.get_by_role("button", name="Download the batch (zip)").click()
    data = (tmp_path / "batch.zip")
    download.value.save_as(data)
    with zipfile.ZipFile(io.BytesIO(data.read_bytes())) as archive:
        names = sorted(archive.namelist())
    assert len(names) == 3 and [name.split("-")[0] for name in names] == ["photo0", "photo1", "photo2"]
    seeds = [int(re.search(r"-(\d+)\.png$", name).group(1)) for name in names]
    assert seeds == [seeds[0], seeds[0] + 1, seeds[0] + 2]
