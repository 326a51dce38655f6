"""The Streamlit page, headless, with the tiny models."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT


@pytest.fixture
def app(model_cache, monkeypatch) -> AppTest:
    monkeypatch.setenv("MODELS", "tiny")
    monkeypatch.setenv("DEVICE", "cpu")
    monkeypatch.setenv("APP_CACHE_DIR", str(model_cache))
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)


def test_page_renders_with_the_backend_panel(app):
    app.run()
    assert not app.exception
    assert app.title[0].value == "YOLO ControlNet Studio"
    sidebar = " ".join(m.value for m in app.sidebar.markdown)
    assert "Attention:" in sidebar and "sdpa" in sidebar


def test_generate_from_the_sample_image_keeps_the_result(app):
    app.run()
    app.slider[0].set_value(2)  # steps
    app.slider[3].set_value(256)  # resolution
    next(b for b in app.button if b.label == "Generate").click().run()
    assert not app.exception
    result = app.session_state["result"]
    assert len(result.images) == 1 and result.images[0].size == (320, 256)  # 512x384 sample, short side 256, snapped to 64
    assert result.run_card["seed"] == result.seed
    app.text_input[0].set_value("another prompt").run()
    assert app.session_state["result"] is result
    assert any(s.value.startswith("Results (seed") for s in app.subheader)
