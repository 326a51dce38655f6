"""The outputs folder (studio/serving/outputs.py): every finished picture on disk, written whole; a disk that
refuses costs a message, never the result."""

from __future__ import annotations

import errno
import json
import time

import pytest
from PIL import Image

from inference_pipeline import GenerationRequest
from studio.core.run_card import PARAMETERS_KEY, read_run_card
from studio.serving import outputs, state

from helpers import OUTPUTS, app_page
from test_app import generate


def today(root):
    return root / time.strftime("%Y-%m-%d", time.localtime())


def test_a_picture_made_on_the_page_lands_in_the_outputs_folder_with_both_text_chunks(app_env):
    state.reset()  # a server started with this OUTPUTS_DIR (conftest: a temporary folder)
    try:
        app = generate(app_page().run())
        result = app.session_state["result"]
        made = sorted(p.name for p in today(OUTPUTS).glob("*-result-*.png"))
        mine = [name for name in made if f"-result-{result.seed}-" in name]
        assert len(mine) == 1, made
        saved = today(OUTPUTS) / mine[0]
        assert read_run_card(saved.read_bytes())["seed"] == result.seed
        assert f"Seed: {result.seed}" in Image.open(saved).text[PARAMETERS_KEY]
        job = mine[0].split("-", 1)[0]
        assert (today(OUTPUTS) / mine[0].replace("-result-", "-control-")).exists()
        lines = [json.loads(line) for line in (today(OUTPUTS) / "index.jsonl").read_text().splitlines()]
        entry = next(line for line in lines if line["job"].startswith(job))
        assert entry["owner"].startswith("token:") and mine[0] in entry["files"]
        assert not list(today(OUTPUTS).glob(".*.part")), "no temporary file left"
    finally:
        state.reset()


def test_an_outputs_folder_that_cannot_be_written_gives_a_message_and_the_page_keeps_working(
        app_env, monkeypatch, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("OUTPUTS_DIR", str(blocked / "outputs"))  # mkdir fails: NotADirectoryError
    state.reset()
    try:
        app = generate(app_page().run())
        assert app.session_state["result"].images and not app.exception
        assert any("could not be saved in the outputs folder" in w.value for w in app.warning)
        assert any(b.label == "Download PNG" for b in app.get("download_button"))
    finally:
        state.reset()


def test_a_full_disk_leaves_no_half_file_and_says_so(tiny_pipeline, photo, tmp_path, monkeypatch):
    result = tiny_pipeline.generate(photo, GenerationRequest(prompt="a red box", steps=1, resolution=64, seed=3))
    original = type(tmp_path).write_bytes

    def full(self, data):
        original(self, data[: len(data) // 2])  # the disk filled up half way through
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(tmp_path), "write_bytes", full)
    with pytest.raises(outputs.OutputsError, match=r"\(No space left on device\); download them from this page"):
        outputs.save(tmp_path, result, "token:me", "0123456789ab")
    assert list(today(tmp_path).iterdir()) == [], "neither a half-written picture nor its temporary file"


def test_outputs_dir_set_to_nothing_turns_the_folder_off(monkeypatch):
    from studio.core.settings import Settings

    monkeypatch.setenv("OUTPUTS_DIR", "")
    assert Settings.from_env().outputs_dir is None
    monkeypatch.setenv("OUTPUTS_DIR", "/tmp/somewhere")
    assert str(Settings.from_env().outputs_dir) == "/tmp/somewhere"
