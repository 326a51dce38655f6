"""The page's preview caches: one for all visitors (an upload's entries its own visitor's), so bounded by bytes,
and holding messages (not exceptions, whose tracebacks would keep a copy of each refused upload alive)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from studio.core.errors import InvalidImageError
from studio.serving.cache import ByteLRU
from studio.serving.previews import Previews


def png(width: int, height: int, shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (shade, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_lru_keeps_the_newest_values_within_its_bytes():
    cache = ByteLRU(100, len)
    for key in "abcde":
        cache.get_or_make(key, lambda key=key: key * 30)  # 30 bytes each: three fit
    assert len(cache) == 3 and cache.bytes == 90
    made = []
    assert cache.get_or_make("c", lambda: made.append(1) or "new") == "c" * 30 and not made  # kept, not remade
    assert cache.get_or_make("huge", lambda: "x" * 101) == "x" * 101 and "huge" not in cache._items


def test_decoded_uploads_are_bounded_by_bytes(tiny_pipeline):
    previews = Previews(tiny_pipeline, max_bytes=3 * 200 * 200 * 3)  # room for three 200x200 pictures
    for shade in range(6):
        previews.image(png(200, 200, shade))
    assert len(previews._images) == 3 and previews._images.bytes <= previews._images.max_bytes


def test_a_refused_upload_is_remembered_as_its_message(tiny_pipeline):
    previews = Previews(tiny_pipeline)
    bad = b"not a picture at all" * 1000
    messages = []
    for _ in range(3):
        with pytest.raises(InvalidImageError) as refused:
            previews.image(bad)
        messages.append(str(refused.value))
    assert len(set(messages)) == 1 and "not an image that can be read" in messages[0]
    (cached,) = [value for value, _ in previews._images._items.values()]
    assert isinstance(cached, str), "a message is kept, not an exception holding a traceback and the upload"


def test_the_cache_budget_comes_from_preview_cache_mb(tiny_pipeline):
    from dataclasses import replace

    pipe = type("Stub", (), {"settings": replace(tiny_pipeline.settings, preview_cache_mb=3)})()
    assert Previews(pipe)._images.max_bytes == 3 * 2**20


def test_one_preview_is_built_once_per_image_and_request(tiny_pipeline, monkeypatch):
    from inference_pipeline import GenerationRequest

    previews = Previews(tiny_pipeline)
    image, key = previews.image(png(96, 64, 200))
    built = []
    original = tiny_pipeline.preview_from
    monkeypatch.setattr(tiny_pipeline, "preview_from", lambda *args: built.append(1) or original(*args))
    request = GenerationRequest(resolution=64)
    first = previews.preview(image, key, request)
    assert previews.preview(image, key, request) is first and len(built) == 1
    assert previews.preview(image, key, GenerationRequest(resolution=64, canny_low=50)) is not first
    assert len(built) == 2


def test_an_upload_is_decoded_once_per_visitor_so_no_visitor_learns_what_another_uploaded(tiny_pipeline, decoded):
    previews = Previews(tiny_pipeline)
    photo = png(120, 90, 77)
    first, first_key = previews.image(photo, "token:alice")
    again, _ = previews.image(photo, "token:alice")
    assert again is first and len(decoded) == 1, "alice's reruns reuse her decode"
    other, other_key = previews.image(photo, "token:mallory")
    assert other is not first and other_key != first_key and len(decoded) == 2, "mallory pays her own decode"
