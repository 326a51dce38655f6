"""A batch from the page (studio/serving/batch_jobs.py and its panel): many photos or a zip, one job each through
the queue, seeds counting up, a broken file named, one zip at the end."""

from __future__ import annotations

import io
import time
import zipfile

import pytest

from inference_pipeline import GenerationRequest
from studio.core.run_card import read_run_card
from studio.serving import access, state
from studio.serving.batch_jobs import BatchError, BatchRun, photos_of
from studio.serving.jobs import JobQueue

from helpers import app_page, sample_scene

BROKEN = ("notes.png", b"these are my notes, not a picture")


def png(size=(96, 64), shift: int = 0) -> bytes:
    buffer = io.BytesIO()
    sample_scene(size).rotate(shift).save(buffer, format="PNG")
    return buffer.getvalue()


def zipped(files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def queue(tiny_pipeline):
    jobs = JobQueue([tiny_pipeline])
    yield jobs
    jobs.shutdown()


def wait(run: BatchRun, timeout_s: float = 300) -> BatchRun:
    run.wait(timeout_s)
    assert not run.active, "the batch did not end"
    return run


def test_five_photos_one_broken_make_four_pictures_in_one_zip_with_seeds_counting_up(queue):
    photos = [(f"photo{i}.png", png(shift=10 * i)) for i in range(4)]
    photos.insert(2, BROKEN)
    run = wait(BatchRun(queue, photos, GenerationRequest(prompt="a box", steps=1, resolution=64, seed=40),
                        "token:me").start())
    assert (run.state, run.done, run.handled, run.total) == ("done", 4, 5, 5)
    assert len(run.failed) == 1 and run.failed[0].startswith("notes.png: This file is not an image that can be read")
    with zipfile.ZipFile(io.BytesIO(run.archive)) as archive:
        names = sorted(archive.namelist())
        cards = {name: read_run_card(archive.read(name)) for name in names if name.endswith(".png")}
        errors = archive.read("errors.txt").decode()
    assert names == ["errors.txt", "photo0-40.png", "photo1-41.png", "photo2-43.png", "photo3-44.png"]
    assert [card["seed"] for card in cards.values()] == [40, 41, 43, 44]  # photo i: seed + i, the broken one too
    assert errors.count("\n") == 1 and "notes.png" in errors


def test_a_zip_is_unpacked_in_name_order_and_uploads_without_pictures_are_refused():
    archive = zipped([("b.jpg", b"2"), ("__MACOSX/._a.png", b"x"), ("a.png", b"1"), ("notes/readme.txt", b"t")])
    assert photos_of([("photos.zip", archive), ("c.webp", b"3")], 2**20) == [
        ("a.png", b"1"), ("b.jpg", b"2"), ("c.webp", b"3")]
    with pytest.raises(BatchError, match="no pictures among these files"):
        photos_of([("empty.zip", zipped([("readme.txt", b"t")]))], 2**20)
    with pytest.raises(BatchError, match="'photos.zip' is not a zip file that can be read"):
        photos_of([("photos.zip", b"not a zip")], 2**20)
    with pytest.raises(BatchError, match="'big.png' in photos.zip is larger than 1 MB unpacked"):
        photos_of([("photos.zip", zipped([("big.png", bytes(2**20 + 1))]))], 2**20)


def test_cancel_stops_the_running_photo_and_the_rest(queue):
    photos = [(f"photo{i}.png", png()) for i in range(3)]
    run = BatchRun(queue, photos, GenerationRequest(prompt="a box", steps=150, resolution=64, seed=1),
                   "token:me").start()
    deadline = time.monotonic() + 120
    while run.job is None or run.job.step < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    run.cancel()
    wait(run, 60)
    assert (run.state, run.done) == ("cancelled", 0) and run.job.state == "cancelled"


def test_a_batch_nobody_follows_loses_its_run_to_the_reaper_and_stops(tiny_pipeline):
    queue = JobQueue([tiny_pipeline], abandon_s=1.0)
    try:
        run = BatchRun(queue, [("a.png", png()), ("b.png", png())],
                       GenerationRequest(prompt="a box", steps=150, resolution=64, seed=1), "token:me").start()
        run.seen -= 10  # the page was closed long ago
        wait(run, 120)
        assert run.state == "cancelled" and "nobody followed it" in run.job.message
    finally:
        queue.shutdown()


def test_the_pages_multi_upload_gives_one_zip_and_the_page_keeps_working(app_env):
    app = app_page().run()
    app.slider(key="steps").set_value(1)
    app.slider(key="resolution").set_value(64)
    app.toggle(key="randomize_seed").set_value(False).run()
    app.number_input(key="seed").set_value(7).run()
    uploads = [("a.png", png(), "image/png"), ("more.zip", zipped([("b.png", png(shift=20)), BROKEN]),
                                                "application/zip")]
    app.file_uploader(key="batch-0").set_value(uploads).run()
    app.button(key="batch-start").click().run()
    token = app.query_params["access"]
    run = state.batch(access.owner_of(token[0] if isinstance(token, list) else token, "unused with a token"))
    assert run is not None and run.total == 3
    wait(run)
    app.run()
    assert any("Done: 2 of 3 photos made, 1 could not be used." in s.value for s in app.success)
    button = next(b for b in app.get("download_button") if b.proto.label == "Download the batch (zip)")
    with zipfile.ZipFile(io.BytesIO(run.archive)) as archive:
        assert sorted(archive.namelist()) == ["a-7.png", "b-8.png", "errors.txt"]
    assert button is not None and not app.exception


def test_a_left_visitors_ended_batch_is_let_go_and_its_photos_go_as_they_are_used(queue, monkeypatch):
    photos = [(f"photo{i}.png", png(shift=10 * i)) for i in range(3)]
    run = state.start_batch(BatchRun(queue, photos, GenerationRequest(steps=1, resolution=64, seed=1), "token:gone"))
    wait(run)
    assert run.photos == [] and run.archive, "the photos went; the zip waits for its page"
    assert state.batch("token:gone") is run, "its page looked a moment ago"
    run.seen -= state.setting("abandon_s") + 1  # the visitor left: nobody looked for ABANDON_S
    assert state.batch("token:someone else") is None and state.batch("token:gone") is None
    assert "token:gone" not in state._batches
