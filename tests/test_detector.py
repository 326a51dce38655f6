"""The fixture detector finds real shapes, and the guided control modes use its detections."""

from __future__ import annotations

import sys

import numpy as np

from inference_pipeline import GenerationRequest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "tools"))
from train_shapes_detector import CLASSES, draw_scene  # noqa: E402


def iou(a, b) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_fixture_detector_finds_the_shapes_in_freshly_drawn_images(tiny_pipeline):
    rng = np.random.default_rng(99)  # training used another seed: these pictures are new
    found = total = 0
    for _ in range(10):
        image, labels = draw_scene(rng)
        detections = tiny_pipeline.detect(image)
        for class_id, box in labels:
            total += 1
            found += any(d.class_id == class_id and d.label == CLASSES[class_id] and iou(d.box, box) >= 0.5
                         for d in detections)
    assert total >= 15 and found / total >= 0.9


def test_class_filter_returns_only_the_chosen_classes(tiny_pipeline):
    rng = np.random.default_rng(5)
    scenes = [draw_scene(rng, max_shapes=4) for _ in range(6)]
    everything = [d for image, _ in scenes for d in tiny_pipeline.detect(image)]
    assert {d.class_id for d in everything} == {0, 1, 2}
    squares = [d for image, _ in scenes for d in tiny_pipeline.detect(image, classes=[1])]
    assert squares and {d.label for d in squares} == {"square"}


def test_the_sample_image_shows_real_detections(tiny_pipeline):
    from studio.core.image_io import load_image

    labels = sorted(d.label for d in tiny_pipeline.detect(load_image(ROOT / "assets" / "sample_scene.png")))
    assert labels == ["circle", "square", "square", "triangle"]


def test_objects_mode_keeps_edges_only_inside_the_chosen_objects(tiny_pipeline):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (256, 256), (40, 40, 40))
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 20, 100, 100), fill=(230, 200, 60))
    draw.rectangle((150, 140, 230, 220), fill=(60, 200, 230))
    request = GenerationRequest(resolution=256, control_mode="objects", control_classes=(0,))
    preview = tiny_pipeline.preview(image, request)
    assert {d.label for d in preview.detections} == {"circle", "square"} and not preview.warnings
    edges = np.asarray(preview.control_image)[..., 0]
    assert edges[10:110, 10:110].max() == 255, "the circle keeps its edges"
    assert edges[130:240, 130:240].max() == 0, "the square's edges are gone"
    background = tiny_pipeline.preview(image, GenerationRequest(resolution=256, control_mode="background",
                                                                control_classes=(0,)))
    edges = np.asarray(background.control_image)[..., 0]
    x1, y1, x2, y2 = (int(round(v)) for v in next(d.box for d in background.detections if d.label == "circle"))
    assert edges[y1:y2, x1:x2].max() == 0, "nothing inside the circle's box"
    assert edges[130:240, 130:240].max() == 255, "the square keeps its edges"


def test_guided_mode_without_a_match_warns_and_uses_the_whole_image(tiny_pipeline, photo):
    request = GenerationRequest(steps=1, resolution=64, seed=1, control_mode="objects", control_classes=(2,),
                                detect_conf=0.99)
    result = tiny_pipeline.generate(photo, request)
    assert result.warnings and "No detected object matches" in result.warnings[0]
    assert result.run_card["warnings"] == result.warnings
    assert np.asarray(result.control_image).max() == 255


def test_fidelity_is_reported_per_image_and_in_the_run_card(tiny_pipeline, photo):
    result = tiny_pipeline.generate(photo, GenerationRequest(steps=2, resolution=64, seed=2, num_images=2))
    from studio.core.control_image import edge_fidelity

    assert len(result.fidelity) == 2 and result.run_card["fidelity"] == result.fidelity
    for image, scores in zip(result.images, result.fidelity):  # each image's own scores, against the control image
        assert scores == edge_fidelity(image, result.control_image)
    assert result.fidelity[0] != result.fidelity[1], "two seeds, two pictures, two scores"


def test_the_fixture_segmenter_outlines_the_drawn_shapes(tiny_pipeline):
    """On pictures it never saw, each drawn shape is matched by a mask of its class with IoU 0.8 or more on
    average (the fixture is small: at most 3 MB)."""
    from train_shapes_detector import shape_mask

    from studio.core.control_image import region_mask
    from studio.engine import tiny_models

    assert tiny_models.SHAPES_SEGMENTER.stat().st_size <= 3 * 2**20
    rng = np.random.default_rng(123)
    ious = []
    for _ in range(12):
        image, labels = draw_scene(rng)
        detections = tiny_pipeline.detect(image)
        assert detections and all(d.polygon for d in detections)
        for class_id, box in labels:
            truth = shape_mask(class_id, box, image.size)
            masks = [region_mask(image.size, [d], grow_px=0) > 0.5 for d in detections if d.class_id == class_id]
            ious.append(max(((truth & m).sum() / (truth | m).sum() for m in masks), default=0.0))
    assert len(ious) >= 20 and np.mean(ious) >= 0.8, ious


def test_objects_mode_at_padding_0_keeps_each_objects_own_outline(tiny_pipeline):
    """At least 90 % of the Canny pixels of each object's outline stay in the control image."""
    import cv2
    from train_shapes_detector import shape_mask

    from studio.core.control_image import canny_edges

    rng = np.random.default_rng(321)
    shares = []
    for _ in range(6):
        image, labels = draw_scene(rng)
        control = tiny_pipeline.preview(image, GenerationRequest(resolution=256, control_mode="objects")).control_image
        kept, edges = np.asarray(control)[..., 0] > 0, canny_edges(image) > 0
        for class_id, box in labels:
            shape = shape_mask(class_id, box, image.size)
            solid, kernel = shape.astype(np.uint8), np.ones((5, 5), np.uint8)
            ring = (cv2.dilate(solid, kernel) > 0) & ~(cv2.erode(solid, kernel) > 0)  # 2 px either side
            outline = edges & ring
            if outline.sum():
                shares.append((kept & outline).sum() / outline.sum())
    assert len(shares) >= 10 and min(shares) >= 0.9, shares
