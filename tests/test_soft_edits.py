"""Soft edits (differential diffusion): the feathered repaint mask is a strength per pixel, on the tiny models and
the fixture detector's sample scene (a circle, two squares, a triangle)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from inference_pipeline import GenerationRequest
from studio.core.png_info import from_parameters
from studio.core.run_card import a1111_parameters
from studio.engine.soft_edit import SoftMask

from helpers import pixels

SMALL = dict(prompt="a toy", steps=6, resolution=128, seed=5, regenerate="objects", objects=(1, 3))


def test_a_pixel_joins_the_sampling_after_as_many_steps_as_its_strength_leaves_out():
    strength = np.array([[0, 0.1, 0.3, 0.45, 0.7, 1.0]], np.float32)
    soft = SoftMask(Image.fromarray(np.round(strength * 255).astype(np.uint8), "L"), steps=4)
    released = np.stack([np.asarray(soft.released(done)) > 0 for done in range(1, 5)])
    # done=1..4: a pixel is sampled once its strength passes 1 - done/4; strength 0 never, 1 from the start
    assert released.astype(int).tolist() == [[[0, 0, 0, 0, 0, 1]], [[0, 0, 0, 0, 1, 1]], [[0, 0, 1, 1, 1, 1]],
                                             [[0, 1, 1, 1, 1, 1]]]
    mask = torch.zeros(2, 1, 1, 6)  # the pipeline's latent mask, doubled for CFG
    soft.advance(0, mask)  # after the first step: the pixels released once two steps have run
    assert mask[:, 0, 0].tolist() == [[0, 0, 0, 0, 1, 1]] * 2


def test_a_hard_mask_releases_the_same_pixels_at_every_step():
    hard = np.zeros((16, 16), np.uint8)
    hard[4:12, 2:9] = 255
    soft = SoftMask(Image.fromarray(hard, "L"), steps=7)
    assert all(np.array_equal(np.asarray(soft.released(done)), hard) for done in range(1, 8))


def test_soft_edges_with_no_feather_are_todays_hard_repaint_bit_for_bit(tiny_pipeline, scene, found):
    hard = tiny_pipeline.generate(scene, GenerationRequest(**SMALL), detections=found)
    soft = tiny_pipeline.generate(scene, GenerationRequest(**SMALL, soft_mask=True), detections=found)
    assert np.array_equal(pixels(soft), pixels(hard))
    assert soft.run_card["request"]["soft_mask"] is True


def test_a_wider_feather_lowers_the_seam_and_the_photo_stays_exact_where_the_mask_is_0(tiny_pipeline, scene, found):
    seams, results = {}, {}
    for feather in (0, 24, 48):
        request = GenerationRequest(**{**SMALL, "resolution": 256}, soft_mask=True, control_feather=feather)
        results[feather] = result = tiny_pipeline.generate(scene, request, detections=found)
        seams[feather] = result.run_card["objects"][0]["seam"]  # one pass for both objects: one seam
        picture = tiny_pipeline.preview_from(scene, found, request).picture
        outside = np.asarray(result.mask) == 0
        assert outside.mean() > 0.25
        assert np.array_equal(pixels(result)[0][outside], np.asarray(picture, np.int16)[outside])
    assert seams[0] > seams[24] > seams[48] and seams[48] < 0.75 * seams[0], seams
    # Sampled or not, the feathered border ends blended into the photo, so the two seams differ by a few percent, as
    # the random weights fall: compared over three seeds, not on one.
    def seam(seed: int, soft_mask: bool) -> float:
        request = GenerationRequest(**{**SMALL, "resolution": 256, "seed": seed}, control_feather=48,
                                    soft_mask=soft_mask)
        return tiny_pipeline.generate(scene, request, detections=found).run_card["objects"][0]["seam"]

    soft, hard = ([seam(seed, soft_mask) for seed in (5, 6, 7)] for soft_mask in (True, False))
    assert soft[0] == seams[48]
    assert sum(hard) > sum(soft), f"the border sampled over fewer steps keeps more photo: {hard} against {soft}"


def test_the_a1111_text_says_soft_inpainting_and_its_mask_blur_and_reads_back(tiny_pipeline, scene, found):
    request = GenerationRequest(**SMALL, soft_mask=True, control_feather=12)
    result = tiny_pipeline.generate(scene, request, detections=found)
    text = a1111_parameters(result.run_card)
    assert "Soft inpainting enabled: True" in text and "Mask blur: 12" in text
    values = from_parameters(text).values
    assert values["soft_mask"] is True and values["control_feather"] == 12
    plain = a1111_parameters(tiny_pipeline.generate(scene, GenerationRequest(**SMALL), detections=found).run_card)
    assert "Soft inpainting" not in plain
