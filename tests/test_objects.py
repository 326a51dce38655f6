"""Each detected object its own subject: picked by id, a prompt of its own, a denoising strength, and the detail
pass at the object's own resolution (ADetailer's flow, with ControlNet), on the tiny models and the fixture
detector (the sample scene: a circle, two squares, a triangle)."""

from __future__ import annotations

import copy
import pickle
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from inference_pipeline import GenerationRequest
from studio.core.color import ciede2000, match_colors, seam_score
from studio.core.detections import Detection, numbered
from studio.core.errors import InvalidRequestError
from studio.core.image_io import load_image
from studio.core.repaint_plan import RepaintPass, denoise_schedule, select, working_size
from studio.core.run_card import a1111_parameters

from helpers import ROOT, pixels

SMALL = dict(prompt="a toy", steps=3, resolution=128, seed=5, detail_resolution=128)
BASE = GenerationRequest(**SMALL)


def req(**changes) -> GenerationRequest:
    """A small request; built anew, so that the mode's defaults (strength, colour correction) apply."""
    return GenerationRequest(**{**SMALL, **changes})


@pytest.fixture(scope="module")
def scene() -> Image.Image:
    return load_image(ROOT / "assets" / "sample_scene.png")


@pytest.fixture(scope="module")
def found(tiny_pipeline, scene) -> list[Detection]:
    detections = tiny_pipeline.detect(scene)
    assert [(d.id, d.label) for d in detections] == [(0, "circle"), (1, "square"), (2, "triangle"), (3, "square")]
    return detections


def kept(result, picture: Image.Image) -> np.ndarray:
    """Where the result must equal the input: outside the repaint mask."""
    outside = np.asarray(result.mask) == 0
    assert outside.any()
    return np.abs(pixels(result)[0] - np.asarray(picture, np.int16)).max(axis=-1)[outside]


# -- ids, selection, sizes: pure ----------------------------------------------------------------------------

def test_ids_follow_confidence_then_left_to_right():
    made = [Detection("b", 1, 0.5, (50, 0, 60, 10)), Detection("a", 0, 0.9, (90, 0, 99, 10)),
            Detection("c", 1, 0.5, (10, 5, 20, 10))]
    assert [(d.id, d.label) for d in numbered(made)] == [(0, "a"), (1, "c"), (2, "b")]


def test_selection_by_id_by_class_by_area_and_by_count():
    dets = numbered([Detection("square", 1, 0.9, (0, 0, 10, 10)), Detection("square", 1, 0.8, (20, 0, 60, 40)),
                     Detection("circle", 0, 0.7, (70, 0, 100, 30))])
    size = (100, 100)
    assert [d.id for d in select(dets, GenerationRequest(objects=(2, 0)), size)] == [0, 2]
    assert [d.id for d in select(dets, GenerationRequest(control_classes=(1,)), size)] == [0, 1]
    assert [d.id for d in select(dets, GenerationRequest(min_object_area=0.05), size)] == [1, 2]  # 1 % is too small
    assert [d.id for d in select(dets, GenerationRequest(max_objects=2), size)] == [0, 1]  # the most confident two
    assert select(dets, GenerationRequest(objects=(7,)), size) == []


def test_a_working_size_has_the_detail_resolution_as_short_side_and_fits_the_longest_side():
    assert working_size((100, 150), 512, 2048) == (512, 768)
    assert working_size((37, 91), 512, 2048) == (512, 1256)  # 1259.2, snapped to 8
    assert max(working_size((20, 400), 512, 2048)) <= 2048


@pytest.mark.parametrize("steps, strength, longest, expected", [
    (20, 1.0, 1000, (20, 1.0, 20)), (20, 0.4, 1000, (50, 20)), (4, 0.4, 50, (10, 4)), (3, 0.7, 1000, (5, 3)),
    (4, 0.05, 50, (50, 2)), (4, 0.0, 50, (0, 0.0, 0))])
def test_the_steps_asked_for_are_the_steps_run_at_any_strength(steps, strength, longest, expected):
    length, handed, run = denoise_schedule(steps, strength, longest)
    assert (length, run) == (expected[0], expected[-1])
    assert int(length * handed) == run  # what diffusers' get_timesteps makes of it


def test_object_prompts_are_validated_frozen_and_travel_whole():
    request = GenerationRequest(object_prompts={"3": " a red bus ", 1: "", 0: "a cat"})
    assert dict(request.object_prompts) == {3: "a red bus", 0: "a cat"} and request.prompts_for(3) == ("a red bus",
                                                                                                      None)
    assert hash(request) == hash(GenerationRequest(object_prompts={0: "a cat", 3: "a red bus"}))
    with pytest.raises(TypeError, match="cannot change"):
        request.object_prompts[5] = "x"
    assert pickle.loads(pickle.dumps(request)) == request and copy.deepcopy(request) == request
    with pytest.raises(InvalidRequestError, match="object_prompts must be a mapping from object ids"):
        GenerationRequest(object_prompts={"bus": "x"})
    with pytest.raises(InvalidRequestError, match="goes with regenerate='all'"):
        GenerationRequest(regenerate="objects", detail_output=True)
    assert (GenerationRequest(regenerate="detail").strength, GenerationRequest(regenerate="detail").color_match,
            GenerationRequest().strength, GenerationRequest().color_match) == (0.4, True, 1.0, False)


# -- colour: CIEDE2000, the seam, colour correction -----------------------------------------------------------

def test_ciede2000_matches_sharmas_reference_pairs():
    pairs = [((50, 2.6772, -79.7751), (50, 0, -82.7485), 2.0425), ((50, 0, 0), (50, -1, 2), 2.3669),
             ((50, 2.49, -0.001), (50, -2.49, 0.0009), 7.1792), ((50, 2.5, 0), (73, 25, -18), 27.1492),
             ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
             ((22.7233, 20.0904, -46.694), (23.0331, 14.973, -42.5619), 2.0373)]
    got = ciede2000(np.array([a for a, _, _ in pairs]), np.array([b for _, b, _ in pairs]))
    assert np.allclose(got, [e for _, _, e in pairs], atol=1e-4)


def test_colour_correction_takes_a_casts_seam_below_2_from_above_5():
    gradient = np.linspace(60, 190, 200, dtype=np.float32)
    photo = np.stack([np.tile(gradient, (160, 1)), np.tile(gradient[::-1], (160, 1)), np.full((160, 200), 120.0)], -1)
    photo += np.random.default_rng(0).normal(0, 6, photo.shape)  # texture
    picture = Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8))
    mask = Image.new("L", picture.size, 0)
    ImageDraw.Draw(mask).ellipse((50, 30, 150, 130), fill=255)
    sampled = Image.fromarray(np.clip(np.asarray(picture, np.float32) + (28, -6, -22), 0, 255).astype(np.uint8))
    whole = RepaintPass((), (0, 0, *picture.size), picture.size, mask, picture)
    without = seam_score(whole.paste(picture, sampled), picture, mask)
    corrected = seam_score(whole.paste(picture, match_colors(sampled, picture, mask)), picture, mask)
    assert without > 5 and corrected < 2, (without, corrected)
    assert seam_score(picture, picture, mask) == 0.0


# -- the pipeline -------------------------------------------------------------------------------------------

def test_one_of_two_squares_picked_by_id_is_the_only_region_that_changes(tiny_pipeline, scene, found):
    request = req(regenerate="objects", objects=(3,))
    result = tiny_pipeline.generate(scene, request, detections=found)
    picture = tiny_pipeline.preview_from(scene, found, request).picture
    assert kept(result, picture).max() == 0
    mask = np.asarray(result.mask) > 0
    scale = picture.size[0] / scene.size[0]
    x1, y1, x2, y2 = (round(v * scale) for v in found[1].box)  # the other square
    assert not mask[y1:y2, x1:x2].any()
    x1, y1, x2, y2 = (round(v * scale) for v in found[3].box)
    assert mask[y1:y2, x1:x2].mean() > 0.9
    assert result.run_card["regenerate"]["objects"] == [3]
    assert [(e["id"], e["class"]) for e in result.run_card["objects"]] == [(3, "square")]


def test_an_objects_own_prompt_reaches_its_pass_and_the_others_use_the_main_one(tiny_pipeline, scene, found,
                                                                               monkeypatch):
    encoded = []
    original = tiny_pipeline.pipe.encode_prompt
    monkeypatch.setattr(tiny_pipeline.pipe, "encode_prompt",
                        lambda prompt, *args, **kwargs: encoded.append(prompt) or original(prompt, *args, **kwargs))
    request = req(prompt="the main prompt 17", regenerate="objects", objects=(1, 3),
                      object_prompts={3: "a red vintage bus 17"}, object_negative_prompts={3: "blurry 17"})
    result = tiny_pipeline.generate(scene, request, detections=found)
    assert encoded == ["the main prompt 17, best quality, extremely detailed",
                       "a red vintage bus 17, best quality, extremely detailed"]
    entries = {e["id"]: e for e in result.run_card["objects"]}
    assert (entries[1]["prompt"], entries[3]["prompt"]) == ("the main prompt 17", "a red vintage bus 17")
    assert entries[3]["negative_prompt"] == "blurry 17" and entries[1]["negative_prompt"] == BASE.negative_prompt


def test_the_detail_pass_keeps_every_pixel_outside_the_masks_and_samples_each_crop_at_its_resolution(
        tiny_pipeline, scene, found):
    request = req(regenerate="detail", objects=(0, 2), detail_resolution=192)
    result = tiny_pipeline.generate(scene, request, detections=found)
    picture = tiny_pipeline.preview_from(scene, found, request).picture
    assert kept(result, picture).max() == 0
    entries = result.run_card["objects"]
    assert [e["id"] for e in entries] == [0, 2]
    assert all(min(e["working_size"]) == 192 and e["strength"] == 0.4 for e in entries)
    assert [o.crop.size for o in result.objects] == [tuple(e["working_size"]) for e in entries]
    assert result.run_card["steps_done"] == 2 * request.steps  # each object: the request's steps
    text = a1111_parameters(result.run_card)
    assert 'ADetailer prompt: "a toy [SEP] a toy"' in text and "ADetailer denoising strength: 0.4" in text
    assert "ADetailer inpaint padding: 32" in text and "ADetailer mask blur: 4" in text


def test_overlapping_objects_are_detailed_in_id_order_the_later_on_top(tiny_pipeline, scene):
    overlapping = [Detection("square", 1, 0.9, (150, 150, 330, 330), id=0),
                   Detection("square", 1, 0.8, (250, 200, 420, 360), id=1)]
    request = req(regenerate="detail")
    both = tiny_pipeline.generate(scene, request, detections=list(reversed(overlapping)))
    first = tiny_pipeline.generate(scene, replace(request, objects=(0,)), detections=overlapping)
    assert [e["id"] for e in both.run_card["objects"]] == [0, 1]
    later = tiny_pipeline.preview_from(scene, overlapping, request).passes[1]
    on_top = later.paste(first.images[0], both.objects[1].crop)  # object 1's pass, over object 0's result
    assert np.array_equal(np.asarray(on_top), np.asarray(both.images[0]))


def test_strength_sets_how_far_the_first_denoising_input_is_from_the_encoded_photo(tiny_pipeline, scene, found):
    import torch

    pipe = tiny_pipeline.pipe
    request = req(regenerate="objects", objects=(1,), steps=4)
    picture = tiny_pipeline.preview_from(scene, found, request).picture
    with torch.no_grad():
        photo = pipe.vae.encode(pipe.image_processor.preprocess(picture).to(pipe.vae.dtype)).latent_dist.mean
        photo = photo * pipe.vae.config.scaling_factor
    first_inputs = []

    def record(module, args, kwargs):
        if len(first_inputs) <= len(distances):  # the first UNet input of each run
            first_inputs.append((args[0] if args else kwargs["sample"])[:1].clone())

    handle = pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    distances = []
    try:
        for strength in (0.2, 0.5, 0.8, 1.0):
            tiny_pipeline.generate(scene, replace(request, strength=strength), detections=found)
            distances.append(float((first_inputs[-1] - photo).abs().mean()))
    finally:
        handle.remove()
    assert distances == sorted(distances) and distances[0] < 0.6 * distances[-1], distances
    unchanged = tiny_pipeline.generate(scene, replace(request, strength=0.0), detections=found)
    assert np.array_equal(np.asarray(unchanged.images[0]), np.asarray(picture))
    assert any("strength 0 keeps the picture" in w for w in unchanged.warnings)


def test_detail_output_runs_the_detector_on_the_generated_picture(tiny_pipeline, scene, monkeypatch):
    request = req(detail_output=True, max_objects=1)
    plain = tiny_pipeline.generate(scene, replace(request, detail_output=False), detections=[])
    seen = []

    def detect(image, *args, **kwargs):  # the noise models find nothing: fixture detections on the output
        seen.append(image.copy())
        return [Detection("square", 1, 0.6, (10, 10, 60, 60)), Detection("circle", 0, 0.9, (80, 20, 120, 60))]

    monkeypatch.setattr(tiny_pipeline, "detect", detect)
    result = tiny_pipeline.generate(scene, request, detections=[])
    assert len(seen) == 1 and np.array_equal(np.asarray(seen[0]), np.asarray(plain.images[0]))
    assert [(e["id"], e["class"], e["image"]) for e in result.run_card["objects"]] == [(0, "circle", 0)]
    changed = np.abs(pixels(result)[0] - pixels(plain)[0]).max(axis=-1) > 0
    ys, xs = np.nonzero(changed)
    assert changed.any() and xs.min() >= 80 - 12 and ys.max() <= 60 + 12  # only around the circle (its mask)
    assert "ADetailer model:" in a1111_parameters(result.run_card)


def test_max_objects_and_min_object_area_limit_the_detail_passes(tiny_pipeline, scene, found):
    top_two = tiny_pipeline.generate(scene, req(regenerate="detail", max_objects=2), detections=found)
    assert [e["id"] for e in top_two.run_card["objects"]] == [0, 1]
    large = tiny_pipeline.generate(scene, req(regenerate="detail", min_object_area=0.06), detections=found)
    share = {d.id: d.area / (scene.size[0] * scene.size[1]) for d in found}
    assert [e["id"] for e in large.run_card["objects"]] == [i for i, s in share.items() if s >= 0.06]
    assert 0 < len(large.run_card["objects"]) < len(found)


def test_the_zip_holds_each_detail_crop_and_its_mask(tiny_pipeline, scene, found):
    from studio.core.downloads import result_files

    result = tiny_pipeline.generate(scene, req(regenerate="detail", objects=(3,)), detections=found)
    names = [name for name in result_files(result) if name.startswith("object")]
    assert sorted(n.split("-")[0] + "-" + n.split("-")[1] for n in names) == ["object3-crop", "object3-mask"]
