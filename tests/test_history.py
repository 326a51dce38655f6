"""The history read back from the outputs folder (studio/serving/history.py and its panel): newest first, each
visitor their own, and what a crash or a deleted file left is passed over."""

from __future__ import annotations

import io

from PIL import Image

from inference_pipeline import GenerationRequest
from studio.page.history_panel import OPEN_KEY
from studio.serving import history, outputs, state

from helpers import app_page
from test_app import generate


def test_runs_come_newest_first_each_owners_own_and_damage_is_passed_over(tiny_pipeline, photo, tmp_path):
    made = []
    for seed, owner in ((1, "token:a"), (2, "token:b"), (3, "token:a")):
        result = tiny_pipeline.generate(photo, GenerationRequest(prompt="a box", steps=1, resolution=64, seed=seed))
        made.append(outputs.save(tmp_path, result, owner, f"job{seed}00000000"))
    assert [run.seed for run in history.runs(tmp_path, "token:a")] == [3, 1]
    assert [run.seed for run in history.runs(tmp_path, None)] == [3, 2, 1]
    assert [run.seed for run in history.runs(tmp_path, None, limit=2)] == [3, 2]
    newest = history.runs(tmp_path, "token:a")[0]
    assert newest.job == "job300000000" and newest.pictures[0].name.startswith("job30000-result-3-")
    index = made[0][0].parent / "index.jsonl"
    index.write_text(index.read_text() + '{"job": "cut sho')  # a crash in the middle of a line
    made[1][0].unlink()  # a picture deleted by hand
    assert [run.seed for run in history.runs(tmp_path, None)] == [3, 1]


def test_a_thumbnail_is_a_small_jpeg(tiny_pipeline, photo, tmp_path):
    result = tiny_pipeline.generate(photo, GenerationRequest(prompt="a box", steps=1, resolution=256, seed=5))
    picture = outputs.save(tmp_path, result, "token:a", "abcdef123456")[0]
    thumb = Image.open(io.BytesIO(history.thumbnail(picture, picture.stat().st_mtime_ns)))
    assert thumb.format == "JPEG" and max(thumb.size) == history.THUMB_SIDE


def test_with_a_password_each_visitor_sees_only_their_own_history_and_a_reload_keeps_it(
        app_env, monkeypatch, tmp_path):
    monkeypatch.setenv("APP_PASSWORD", "open sesame")
    monkeypatch.setenv("OUTPUTS_DIR", str(tmp_path / "outputs"))
    state.reset()
    try:
        pages = []
        for _ in range(2):
            page = app_page().run()
            page.text_input[0].input("open sesame")
            page.button[0].click().run()  # the login form's Enter
            pages.append(generate(page))
        first, second = pages
        for page in pages:
            assert any(e.label == "History (the latest 1 run)" for e in page.expander)
            assert not any(b.key and b.key.startswith("history-") for b in page.button), "closed: nothing drawn"
            page.session_state[OPEN_KEY] = True  # the visitor opens the panel
            page.run()
        mine = history.runs(tmp_path / "outputs", None)
        assert len(mine) == 2 and mine[0].owner != mine[1].owner
        assert first.button(key=f"history-{mine[1].job}")
        assert all(b.key != f"history-{mine[0].job}" for b in first.button), "the other visitor's run is not shown"
        reloaded = app_page()
        reloaded.query_params["access"] = first.query_params["access"]  # a reload keeps the tab's address
        reloaded.session_state[OPEN_KEY] = True
        reloaded.run()
        assert reloaded.session_state["page"].result is None, "the reload starts with an empty results panel"
        assert reloaded.button(key=f"history-{mine[1].job}")
    finally:
        state.reset()


def test_with_the_outputs_folder_off_the_page_says_there_is_no_history(app_env, monkeypatch):
    monkeypatch.setenv("OUTPUTS_DIR", "")
    state.reset()
    try:
        app = generate(app_page().run())
        assert app.session_state["page"].result.images
        assert any("No history: the outputs folder is turned off" in c.value for c in app.caption)
    finally:
        state.reset()
