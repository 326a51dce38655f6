"""Control images on synthetic scenes whose geometry is known to the pixel."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from studio.core.control_image import (NoMatchingDetectionsError, build_control_image, canny_edges, edge_fidelity,
                                       edge_map_control, place_image, region_mask, repaint_mask)
from studio.core.detections import Detection
from studio.core.sizes import fit_size

# Two white squares on black: A (class 0) and B (class 1); boxes leave 5 px around each square.
SQUARE_A, SQUARE_B = (20, 20, 60, 60), (120, 30, 170, 80)
BOX_A, BOX_B = (15, 15, 65, 65), (115, 25, 175, 85)
DETECTIONS = [Detection("circle", 0, 0.9, BOX_A), Detection("square", 1, 0.8, BOX_B)]


@pytest.fixture
def scene() -> Image.Image:
    canvas = np.zeros((100, 200, 3), np.uint8)
    for x1, y1, x2, y2 in (SQUARE_A, SQUARE_B):
        canvas[y1:y2, x1:x2] = 255
    return Image.fromarray(canvas)


def edges_of(control: Image.Image) -> np.ndarray:
    array = np.asarray(control)
    assert array.shape[2] == 3 and np.array_equal(array[..., 0], array[..., 2])
    return array[..., 0].astype(np.int32)


def inside(array: np.ndarray, box) -> np.ndarray:
    x1, y1, x2, y2 = box
    return array[y1:y2, x1:x2]


def outside(array: np.ndarray, box) -> np.ndarray:
    masked = array.copy()
    x1, y1, x2, y2 = box
    masked[y1:y2, x1:x2] = 0
    return masked


@pytest.mark.parametrize("size, short, multiple, expected", [
    ((512, 512), 512, 8, (512, 512)),
    ((1000, 500), 512, 64, (1024, 512)),
    ((480, 640), 512, 8, (512, 680)),
    ((3000, 2000), 768, 64, (1152, 768)),
    ((80, 96), 64, 8, (64, 80)),
])
def test_fit_size_keeps_aspect_and_snaps(size, short, multiple, expected):
    assert fit_size(*size, short, multiple) == expected


def test_full_mode_keeps_every_edge_at_the_image_size(scene):
    edges = edges_of(build_control_image(scene))
    assert edges.shape == (100, 200)
    assert inside(edges, BOX_A).max() == 255 and inside(edges, BOX_B).max() == 255
    assert outside(outside(edges, BOX_A), BOX_B).max() == 0
    assert np.array_equal(edges, canny_edges(scene).astype(np.int32))


def test_objects_mode_keeps_only_the_chosen_objects_edges(scene):
    edges = edges_of(build_control_image(scene, DETECTIONS, mode="objects", classes=[0]))
    assert np.array_equal(inside(edges, BOX_A), inside(canny_edges(scene).astype(np.int32), BOX_A))
    assert outside(edges, BOX_A).max() == 0
    both = edges_of(build_control_image(scene, DETECTIONS, mode="objects"))
    assert np.array_equal(both, canny_edges(scene).astype(np.int32))


def test_background_mode_keeps_only_what_lies_outside_the_chosen_boxes(scene):
    edges = edges_of(build_control_image(scene, DETECTIONS, mode="background", classes=[0]))
    assert inside(edges, BOX_A).max() == 0
    assert inside(edges, BOX_B).max() == 255
    everything = edges_of(build_control_image(scene, [], mode="background"))
    assert np.array_equal(everything, canny_edges(scene).astype(np.int32))


def test_outlines_mode_adds_the_box_outlines(scene):
    edges = edges_of(build_control_image(scene, DETECTIONS, mode="outlines", classes=[1]))
    x1, y1, x2, y2 = BOX_B
    assert (edges[y1, x1:x2] == 255).all() and (edges[y2 - 1, x1:x2] == 255).all()
    assert (edges[y1:y2, x1] == 255).all() and (edges[y1:y2, x2 - 1] == 255).all()
    assert inside(edges, BOX_A).max() == 0


def test_no_matching_detection_is_reported_not_returned_empty(scene):
    with pytest.raises(NoMatchingDetectionsError, match="No detected object matches"):
        build_control_image(scene, DETECTIONS, mode="objects", classes=[7])
    with pytest.raises(NoMatchingDetectionsError):
        build_control_image(scene, [], mode="outlines")


def test_padding_grows_the_kept_region_by_the_expected_amount():
    box = [Detection("square", 1, 0.9, (50, 40, 70, 60))]
    mask = region_mask((200, 100), box, padding=0.5, grow_px=0)  # a 20x20 box, 10 px more on every side
    ys, xs = np.nonzero(mask)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (40, 79, 30, 69)
    assert mask.sum() == 40 * 40
    assert region_mask((200, 100), box, grow_px=0).sum() == 20 * 20
    assert region_mask((200, 100), box).sum() == 26 * 26  # by default 3 px more, for the object's own outline


def test_padding_lets_nearby_edges_through(scene):
    tight = [Detection("circle", 0, 0.9, (25, 25, 55, 55))]  # inside square A: its border lies 5 px outside
    assert edges_of(build_control_image(scene, tight, mode="objects")).max() == 0
    padded = edges_of(build_control_image(scene, tight, mode="objects", padding=0.25))  # 7.5 px more a side
    assert np.array_equal(inside(padded, BOX_A), inside(canny_edges(scene).astype(np.int32), BOX_A))


def test_a_box_on_the_objects_edge_keeps_its_outline_at_padding_0(scene):
    """A box drawn exactly on a square's border (as a detector's is): Canny's edge pixels lie on both sides of
    it, and the default growth keeps them all."""
    exact = [Detection("square", 1, 0.9, SQUARE_A)]
    kept = edges_of(build_control_image(scene, exact, mode="objects")) > 0
    outline = canny_edges(scene) > 0
    x1, y1, x2, y2 = SQUARE_A
    own = np.zeros_like(outline)
    own[y1 - 3:y2 + 3, x1 - 3:x2 + 3] = outline[y1 - 3:y2 + 3, x1 - 3:x2 + 3]
    assert (kept & own).sum() / own.sum() >= 0.99


def test_a_polygon_region_follows_the_shape_not_its_box():
    triangle = Detection("triangle", 2, 0.9, (20, 20, 80, 80), polygon=((50, 20), (80, 80), (20, 80)))
    mask = region_mask((100, 100), [triangle], grow_px=0)
    assert mask[70, 50] == 1.0 and mask[22, 22] == 0.0 and mask[22, 78] == 0.0  # box corners: not the triangle
    assert 0.45 < mask.sum() / (60 * 60) < 0.55  # half of its box
    grown = region_mask((100, 100), [triangle], padding=0.1)  # 3 px + 10 % of its 60 px sides
    assert grown.sum() > mask.sum() and grown[22, 22] == 0.0
    assert grown[11, 50] == 1.0 and grown[10, 50] == 0.0  # 9 px above the apex, not 10


def test_repaint_masks_are_the_objects_their_complement_or_everything(scene):
    size = scene.size
    objects = repaint_mask(size, DETECTIONS, "objects", classes=[0])
    assert np.array_equal(objects, region_mask(size, DETECTIONS[:1]))
    assert np.array_equal(repaint_mask(size, DETECTIONS, "background", classes=[0]), 1.0 - objects)
    assert repaint_mask(size, [], "all").min() == 1.0 and repaint_mask(size, [], "all").shape == (100, 200)
    with pytest.raises(NoMatchingDetectionsError, match="nothing to tell apart"):
        repaint_mask(size, DETECTIONS, "objects", classes=[7])
    with pytest.raises(ValueError, match="regenerate must be one of all, objects, background"):
        repaint_mask(size, DETECTIONS, "sky")


def test_place_image_maps_polygons_like_boxes():
    image = Image.fromarray(np.full((100, 200, 3), 90, np.uint8))
    _, placement = place_image(image, (100, 50), "resize")
    assert placement.map_polygon(((20, 10), (120, 90))) == ((10, 5), (60, 45)) and placement.map_polygon(None) is None


def test_background_weight_scales_the_other_region(scene):
    edges = edges_of(build_control_image(scene, DETECTIONS, mode="objects", classes=[0], background_weight=0.25))
    assert inside(edges, BOX_A).max() == 255
    assert set(np.unique(inside(edges, BOX_B))) == {0, 64}  # 0.25 * 255, rounded


def test_feather_softens_the_mask_border():
    mask = region_mask((100, 100), [Detection("square", 1, 0.9, (30, 30, 70, 70))], feather=8, grow_px=0)
    assert mask[50, 50] == pytest.approx(1.0, abs=1e-3) and mask[5, 5] == pytest.approx(0.0, abs=1e-3)
    assert 0.2 < mask[50, 30] < 0.8


def test_place_image_resize_crop_and_fill_map_boxes():
    image = Image.fromarray(np.full((100, 200, 3), 90, np.uint8))
    resized, placement = place_image(image, (100, 50), "resize")
    assert resized.size == (100, 50) and placement.map_box((20, 10, 120, 90)) == (10, 5, 60, 45)
    cropped, placement = place_image(image, (100, 100), "crop")
    assert cropped.size == (100, 100) and placement.map_box((60, 20, 140, 80)) == (10, 20, 90, 80)
    filled, placement = place_image(image, (100, 100), "fill")
    assert filled.size == (100, 100) and placement.map_box((0, 0, 200, 100)) == (0, 25, 100, 75)
    assert canny_edges(filled).max() == 0, "the filled border must not draw an edge"
    assert placement.inner == (0, 25, 100, 75)


def test_resize_and_fill_leaves_the_filled_area_of_the_control_image_empty():
    """A1111 leaves the padding empty; repeating the border pixels drew streaks from the last row to the edge."""
    from studio.core.preparation import prepare
    from studio.core.request import GenerationRequest

    stripes = np.zeros((60, 200, 3), np.uint8)
    stripes[:, ::10] = 255  # vertical lines that reach the top and bottom rows
    stripes[..., 1] = np.linspace(0, 120, 60, dtype=np.uint8)[:, None]  # and a gentle change from top to bottom
    request = GenerationRequest(width=200, height=200, resize_mode="fill")
    preview = prepare(Image.fromarray(stripes), [], request, 2048)
    control = np.asarray(preview.control_image)[..., 0]
    y1, y2 = 70, 130  # 200x60 fitted into 200x200
    assert control[:y1].max() == 0 and control[y2:].max() == 0, "no edges in the filled area"
    assert control[y1:y2].mean() > 20, "the photo's own edges stay"
    picture = np.asarray(preview.picture)
    assert np.array_equal(picture[y1 - 1], picture[y1 + 1]) and not np.array_equal(picture[y1 - 1], picture[y1])
    assert not np.array_equal(picture[0], picture[y1]), "mirrored there, not one row repeated"


def test_a_flat_or_tiny_photo_warns_that_its_control_image_is_nearly_empty(scene):
    from studio.core.preparation import prepare
    from studio.core.request import GenerationRequest

    tiny = Image.fromarray(np.random.default_rng(0).integers(120, 136, (32, 32, 3), np.uint8))
    warned = prepare(tiny, [], GenerationRequest(resolution=256), 2048).warnings
    assert len(warned) == 1 and warned[0].startswith("The control image is nearly empty: 0.0% of its pixels")
    assert prepare(scene, [], GenerationRequest(resolution=256), 2048).warnings == []
    low = GenerationRequest(resolution=256, canny_low=1, canny_high=2)  # what the warning suggests
    assert prepare(tiny, [], low, 2048).warnings == []


def test_own_edge_map_is_used_as_is_or_inverted():
    drawing = np.full((32, 32), 255, np.uint8)
    drawing[10:12, :] = 0  # black lines on white, as people draw them
    control = edge_map_control(Image.fromarray(drawing), invert=True)
    array = np.asarray(control)[..., 0]
    assert array[10, 5] == 255 and array[0, 0] == 0
    assert np.array_equal(np.asarray(edge_map_control(Image.fromarray(drawing)))[..., 1], drawing)


def test_fidelity_of_a_map_with_itself_is_about_one_and_of_a_blank_image_zero(scene):
    control = build_control_image(scene)
    same = edge_fidelity(control, control)
    assert same["precision"] > 0.95 and same["recall"] > 0.95 and same["f1"] > 0.95
    blank = edge_fidelity(Image.new("RGB", scene.size, "gray"), control)
    assert blank == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "score": 0.0}
    shifted = edge_fidelity(Image.fromarray(np.roll(np.asarray(scene), 12, axis=1)), control)
    assert shifted["f1"] < 0.6


def test_thresholds_and_modes_out_of_range_are_refused(scene):
    with pytest.raises(ValueError, match="1..255"):
        canny_edges(scene, 0, 200)
    with pytest.raises(ValueError, match="control mode"):
        build_control_image(scene, mode="sketch")
    with pytest.raises(ValueError, match="resize mode"):
        place_image(scene, (64, 64), "stretch")


def _installed_photo(package: str, *parts: str):
    import importlib.util
    from pathlib import Path

    return Path(importlib.util.find_spec(package).submodule_search_locations[0], *parts)


# Real photos that ship inside installed packages (no download): a street, two people, a portrait.
PHOTOS = {"bus": ("ultralytics", "assets", "bus.jpg"), "zidane": ("ultralytics", "assets", "zidane.jpg"),
          "grace_hopper": ("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg")}


def placed_photo(name: str) -> Image.Image:
    image = Image.open(_installed_photo(*PHOTOS[name])).convert("RGB")
    return place_image(image, fit_size(*image.size, 512))[0]


@pytest.mark.parametrize("name", PHOTOS)
def test_fidelity_score_is_about_zero_for_anything_unrelated_and_one_for_the_control(name):
    photo = placed_photo(name)
    control = build_control_image(photo)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (photo.height, photo.width, 3), np.uint8))
    other = placed_photo(next(n for n in PHOTOS if n != name)).resize(photo.size)
    scores = {kind: edge_fidelity(image, control)["score"]
              for kind, image in (("noise", noise), ("other photo", other), ("control", control))}
    assert abs(scores["noise"]) <= 0.1 and abs(scores["other photo"]) <= 0.1, scores
    assert scores["control"] >= 0.95, scores
    assert edge_fidelity(noise, control)["f1"] > scores["noise"] + 0.15, "plain F1 credits noise; the score does not"


@pytest.mark.parametrize("name", PHOTOS)
def test_fidelity_score_falls_with_every_step_of_blur_or_shift(name):
    from PIL import ImageFilter

    photo = placed_photo(name)
    control = build_control_image(photo)
    blurred = [photo] + [photo.filter(ImageFilter.GaussianBlur(radius)) for radius in (0.5, 1, 2, 4)]
    shifted = [photo] + [Image.fromarray(np.roll(np.asarray(photo), (d, d), (0, 1))) for d in (1, 2, 3, 6, 12, 24)]
    for copies in (blurred, shifted):
        scores = [edge_fidelity(copy, control)["score"] for copy in copies]
        assert scores[0] == 1.0
        assert all(later < earlier for earlier, later in zip(scores, scores[1:])), scores


def test_the_fidelity_of_a_repaint_is_counted_inside_its_mask_only():
    """A noise repaint of a small square kept the rest of the picture, edges and all: over the whole picture it
    scored well; inside the repainted square it scores about chance."""
    from PIL import ImageDraw

    control = Image.new("RGB", (128, 128))
    draw = ImageDraw.Draw(control)
    draw.rectangle((20, 20, 100, 100), outline="white")
    draw.line((0, 60, 127, 60), fill="white")
    output = np.asarray(control).copy()
    output[40:80, 40:80] = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    mask = Image.new("L", (128, 128))
    ImageDraw.Draw(mask).rectangle((40, 40, 79, 79), fill=255)
    whole = edge_fidelity(Image.fromarray(output), control)
    inside = edge_fidelity(Image.fromarray(output), control, mask=mask)
    assert whole["score"] > 0.6 and abs(inside["score"]) < 0.1
    assert edge_fidelity(control, control, mask=mask)["score"] == 1.0
    assert edge_fidelity(control, control, mask=Image.new("L", (128, 128)))["score"] == 1.0  # nothing repainted
