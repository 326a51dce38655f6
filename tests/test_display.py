"""Pictures as the page shows them (studio/core/display.py) and what a waiting job keeps (preparation.py)."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
from PIL import Image

from inference_pipeline import GenerationRequest
from studio.core import display
from studio.core.detections import Detection
from studio.core.preparation import KEEP_SLACK, bounded_input

from helpers import pixels, sample_scene


def test_a_photo_is_shown_as_a_jpeg_no_wider_than_the_display_and_an_edge_map_as_a_grey_png():
    photo = sample_scene((2000, 1500))
    shown = Image.open(io.BytesIO(display.photo(photo)))
    assert shown.format == "JPEG" and shown.size == (display.DISPLAY_SIDE, display.DISPLAY_SIDE * 3 // 4)
    small = Image.open(io.BytesIO(display.photo(sample_scene((200, 100)))))
    assert small.size == (200, 100), "never enlarged"
    edges = Image.new("RGB", (512, 512))
    edges.paste((255, 255, 255), (100, 100, 400, 102))
    encoded = display.edges(edges)
    decoded = Image.open(io.BytesIO(encoded))
    assert decoded.format == "PNG" and decoded.mode == "L" and len(encoded) < 3_000
    assert np.array_equal(np.asarray(decoded), np.asarray(edges.convert("L"))), "every edge pixel exact"


def test_a_waiting_job_keeps_its_photo_at_twice_the_output_at_most_with_its_detections_scaled_along():
    photo = sample_scene((3000, 2000))
    request = GenerationRequest(resolution=256)
    found = [Detection("square", 1, 0.9, (300.0, 600.0, 900.0, 1200.0), ((300.0, 600.0), (900.0, 1200.0)), 0)]
    kept, detections, _ = bounded_input(photo, request, 2048, found)
    assert kept.size == (768, 512) and kept.width <= KEEP_SLACK * 384
    assert detections[0].box == (76.8, 153.6, 230.4, 307.2)
    assert detections[0].polygon == ((76.8, 153.6), (230.4, 307.2))
    small = sample_scene((400, 300))
    assert bounded_input(small, request, 2048, found)[0] is small, "a photo near the output size is kept whole"


def test_the_job_of_a_large_upload_makes_the_same_pixels_from_the_page_preview(tiny_pipeline):
    photo = sample_scene((1600, 1200))
    request = GenerationRequest(prompt="a red box", steps=2, resolution=64, seed=8, regenerate="objects")
    preview = tiny_pipeline.preview(photo, request)
    kept, _, kept_preview = bounded_input(photo, request, tiny_pipeline.settings.max_side, preview=preview)
    assert kept.size == (176, 132)  # twice the 88x64 output
    assert [d.box for d in kept_preview.detections] != [d.box for d in preview.detections]
    whole = tiny_pipeline.generate(photo, request, preview=preview)
    waited = tiny_pipeline.generate(kept, request, preview=kept_preview)
    assert np.array_equal(pixels(whole.images[0]), pixels(waited.images[0]))
    assert replace(kept_preview, detections=preview.detections) == preview, "only the detections change"
