"""A run as plain data for a Ray replica (studio/core/wire.py): pictures as lossless bytes, never pickles."""

from __future__ import annotations

import threading

import numpy as np
from PIL import Image

from studio.core import wire
from studio.core.detections import Detection
from studio.core.request import GenerationRequest, GenerationResult, request_from


def noise(mode: str, size=(48, 32), seed: int = 0) -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    values = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(values[..., 0] if channels == 1 else values, mode)


def test_pictures_travel_losslessly_colour_as_webp_and_masks_as_png_in_their_own_mode():
    rgba = noise("RGBA")
    rgba.putalpha(0)  # fully transparent: WebP keeps the colour under it only when told to
    for image, kind in ((noise("RGB"), b"WEBP"), (rgba, b"WEBP"), (noise("L"), b"PNG")):
        data = wire.encoded(image)
        assert kind in data[:16], data[:16]
        back = wire.picture(data)
        assert back.mode == image.mode and np.array_equal(np.asarray(back), np.asarray(image))


def test_one_photo_encoded_by_two_threads_at_once_comes_out_lossless_from_both(monkeypatch):
    """Two jobs sent one photo to two Ray replicas at once (tests/test_ray_jobs.py). Pillow's `save` keeps its
    parameters on the image object while it encodes and puts the old ones back when it returns; when the first
    encode returned while the second was inside the encoder, the second came out lossy WebP at quality 80 and
    its replica drew its edges a pixel off (seen in CI). Here the two encodes interleave exactly that way."""
    photo = noise("RGB")
    real_save = Image.SAVE["WEBP"]
    second_inside, first_returned = threading.Event(), threading.Event()
    second: list[bytes] = []
    other = threading.Thread(target=lambda: second.append(wire.encoded(photo)))

    def interleaved(image, fp, filename):
        if threading.current_thread() is other:
            second_inside.set()
            assert first_returned.wait(10)
        else:
            other.start()
            assert second_inside.wait(10)
        real_save(image, fp, filename)

    monkeypatch.setitem(Image.SAVE, "WEBP", interleaved)
    first = wire.encoded(photo)
    first_returned.set()
    other.join(10)
    for data in (first, *second):
        assert np.array_equal(np.asarray(wire.picture(data)), np.asarray(photo)), "a lossy copy was sent"
    assert len(second) == 1


def test_a_request_and_its_detections_go_as_plain_data_and_come_back_equal():
    request = GenerationRequest(prompt="a red box", steps=3, resolution=64, seed=4,
                                object_prompts={2: "a blue ball"})
    detections = [Detection("square", 1, 0.9, (1.0, 2.0, 30.0, 40.0), ((1.0, 2.0), (30.0, 2.0), (30.0, 40.0)))]
    sent = wire.request_data(request)
    assert type(sent["object_prompts"]) is dict and request_from(sent) == request
    assert wire.detections_of(wire.detections_data(detections)) == detections


def test_a_result_comes_back_with_its_pictures_and_fields():
    result = GenerationResult(images=[noise("RGB", seed=1), noise("RGB", seed=2)], control_image=noise("L"),
                              mask=noise("L", seed=3), detections=[], seed=7, seeds=[7, 8],
                              timings={"total_s": 1.0}, run_card={"steps_done": 3}, cancelled=False,
                              fidelity=[{"score": 0.5}] * 2, warnings=["w"], flagged=[False, False])
    back = wire.result_of(wire.result_data(result))
    sent = result.images + [result.control_image, result.mask]
    for a, b in zip(back.images + [back.control_image, back.mask], sent):
        assert a.mode == b.mode and np.array_equal(np.asarray(a), np.asarray(b))
    assert (back.seeds, back.run_card, back.warnings) == ([7, 8], {"steps_done": 3}, ["w"])
    assert back.flagged == [False, False] and back.timings == {"total_s": 1.0}
