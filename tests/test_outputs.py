"""The outputs folder (studio/serving/outputs.py): every finished picture on disk, written whole; a disk that
refuses costs a message, never the result."""

from __future__ import annotations

import errno
import os
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
        result = app.session_state["page"].result
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
        assert app.session_state["page"].result.images and not app.exception
        assert any("could not be saved in the outputs folder" in w.value for w in app.warning)
        assert any(b.label == "Download PNG" for b in app.get("download_button"))
    finally:
        state.reset()


def test_a_full_disk_leaves_no_half_file_and_says_so(tiny_pipeline, photo, tmp_path, monkeypatch):
    result = tiny_pipeline.generate(photo, GenerationRequest(prompt="a red box", steps=1, resolution=64, seed=3))
    original = os.fdopen

    class HalfWay:
        """A file on a disk that fills up half way through the picture."""

        def __init__(self, handle: int, mode: str) -> None:
            self.file = original(handle, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.file.close()

        def write(self, data: bytes) -> None:
            self.file.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", HalfWay)
    with pytest.raises(outputs.OutputsError, match=r"\(No space left on device\); download them from this page"):
        outputs.save(tmp_path, result, "token:me", "0123456789ab")
    assert list(today(tmp_path).iterdir()) == [], "neither a half-written picture nor its temporary file"


def test_outputs_dir_set_to_nothing_turns_the_folder_off(monkeypatch):
    from studio.core.settings import Settings

    monkeypatch.setenv("OUTPUTS_DIR", "")
    assert Settings.from_env().outputs_dir is None
    monkeypatch.setenv("OUTPUTS_DIR", "/tmp/somewhere")
    assert str(Settings.from_env().outputs_dir) == "/tmp/somewhere"


def test_a_link_planted_where_the_temporary_file_used_to_go_redirects_nothing(tmp_path):
    from studio.serving.outputs import write_whole

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / ".picture.png.part").symlink_to(victim)  # the old, predictable temporary name
    write_whole(tmp_path / "picture.png", b"the picture")
    assert victim.read_text() == "keep me" and (tmp_path / "picture.png").read_bytes() == b"the picture"
    assert (tmp_path / "picture.png").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == [".picture.png.part", "picture.png", "victim.txt"]
