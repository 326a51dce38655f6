"""The control settings reach the pixels: the tiny ControlNet has weights under which the control image, its
scale, start/end and guess mode all change the output, so a pipeline that dropped one of them fails here."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from inference_pipeline import GenerationRequest

from helpers import sample_scene

BASE = GenerationRequest(prompt="a red box", steps=4, resolution=128, seed=3)


@pytest.fixture(scope="module")
def scene() -> Image.Image:
    """The bundled sample at the output size (128x128), so nothing is resized on the way."""
    return sample_scene((128, 128))


def generated(pipe, image, request) -> np.ndarray:
    return np.asarray(pipe.generate(image, request).images[0], dtype=np.float32)


def mean_change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def test_another_control_image_of_the_same_size_changes_the_output(tiny_pipeline, scene):
    mirrored = scene.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert mean_change(generated(tiny_pipeline, scene, BASE), generated(tiny_pipeline, mirrored, BASE)) > 2.0


def test_an_own_edge_map_is_what_controls_the_output(tiny_pipeline):
    lines, blank = np.zeros((128, 128, 3), np.uint8), np.zeros((128, 128, 3), np.uint8)
    lines[::16] = 255
    request = replace(BASE, control_source="edge_map")
    assert mean_change(generated(tiny_pipeline, Image.fromarray(lines), request),
                       generated(tiny_pipeline, Image.fromarray(blank), request)) > 2.0


def test_controlnet_scale_zero_removes_the_control_and_one_applies_it(tiny_pipeline, scene):
    mirrored = scene.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    off = replace(BASE, controlnet_scale=0.0)
    assert mean_change(generated(tiny_pipeline, scene, BASE), generated(tiny_pipeline, scene, off)) > 2.0
    # at scale 0 the control image no longer matters at all
    assert np.array_equal(generated(tiny_pipeline, scene, off), generated(tiny_pipeline, mirrored, off))


@pytest.mark.parametrize("window", [dict(control_end=0.5), dict(control_start=0.5), dict(control_start=0.25,
                                                                                         control_end=0.75)])
def test_control_start_and_end_change_the_output(tiny_pipeline, scene, window):
    moved = generated(tiny_pipeline, scene, replace(BASE, **window))
    assert mean_change(generated(tiny_pipeline, scene, BASE), moved) > 0.2


def test_guess_mode_changes_the_output(tiny_pipeline, scene):
    assert mean_change(generated(tiny_pipeline, scene, BASE),
                       generated(tiny_pipeline, scene, replace(BASE, guess_mode=True))) > 2.0
