import pytest
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


def test_library_versions_name_the_installed_stack():
    versions = library_versions()
    assert {"torch", "diffusers", "transformers", "ultralytics"} <= set(versions)
