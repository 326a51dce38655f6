import pytest
import torch
from PIL import Image

from run_card import library_versions, png_with_run_card, read_run_card


def test_run_card_round_trips_through_png():
    card = {"seed": 5, "request": {"steps": 20, "prompt": "ünïcode ✓"}}
    png = png_with_run_card(Image.new("RGB", (16, 16), "blue"), card)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_run_card(png) == card


def test_png_without_card_raises_key_error():
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    with pytest.raises(KeyError):
        read_run_card(buffer.getvalue())


def test_library_versions_are_the_installed_ones_and_skip_what_is_missing():
    import diffusers
    import transformers
    import ultralytics

    versions = library_versions()
    assert versions["diffusers"] == diffusers.__version__
    assert versions["transformers"] == transformers.__version__
    assert versions["ultralytics"] == ultralytics.__version__
    assert versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert "flash-attn" not in versions  # not installed in the test environment: left out, not "unknown"
