"""Regenerating only what YOLO found, or everything but it: outside the mask the input comes back pixel for pixel."""

from __future__ import annotations

import io
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
from PIL import Image, ImageOps

from inference_pipeline import GenerationRequest, InferencePipeline, InvalidRequestError
from studio.core.settings import Settings

from helpers import sample_scene

BASE = GenerationRequest(prompt="a red box", resolution=192, steps=4, seed=5)


@pytest.fixture(scope="module")
def scene() -> Image.Image:
    """The sample scene already at the output size (256x192 at resolution 192): no resampling in the way."""
    return sample_scene((256, 192))


def diff(result, image) -> np.ndarray:
    return np.abs(np.asarray(result.images[0], np.int16) - np.asarray(image, np.int16)).max(axis=-1)


@pytest.mark.parametrize("mode", ["objects", "background"])
def test_outside_the_mask_the_input_is_kept_and_inside_it_changes(tiny_pipeline, scene, mode):
    result = tiny_pipeline.generate(scene, replace(BASE, regenerate=mode))
    mask = np.asarray(result.mask)
    assert result.mask.mode == "L" and result.mask.size == result.images[0].size == scene.size
    kept, repainted = mask == 0, mask == 255
    assert kept.mean() > 0.2 and repainted.mean() > 0.2
    changed = diff(result, scene)
    assert changed[kept].max() <= 1  # pixel for pixel (1/255 allowed)
    assert changed[repainted].mean() > 20
    card = result.run_card["regenerate"]
    assert card["mode"] == mode and card["classes"] == ["circle", "square", "triangle"]
    assert card["mask_source"] == "seg" and card["repainted_share"] == pytest.approx(mask.mean() / 255, 1e-3)


def test_a_box_only_detector_repaints_the_boxes(tiny_pipeline, scene):
    boxes = [replace(d, polygon=None) for d in tiny_pipeline.detect(scene)]
    result = tiny_pipeline.generate(scene, replace(BASE, regenerate="objects"), detections=boxes)
    assert result.run_card["regenerate"]["mask_source"] == "box"
    seg = tiny_pipeline.generate(scene, replace(BASE, regenerate="objects"))
    assert (np.asarray(result.mask) > 127).sum() > (np.asarray(seg.mask) > 127).sum()  # a box holds its shape


def test_objects_and_background_masks_are_complements(tiny_pipeline, scene):
    objects = np.asarray(tiny_pipeline.generate(scene, replace(BASE, regenerate="objects")).mask, np.int16)
    background = np.asarray(tiny_pipeline.generate(scene, replace(BASE, regenerate="background")).mask, np.int16)
    assert np.abs(objects + background - 255).max() <= 1


def test_feather_blends_the_border_and_chosen_classes_limit_the_mask(tiny_pipeline, scene):
    squares = tiny_pipeline.generate(scene, replace(BASE, regenerate="objects", control_classes=(1,),
                                                    control_feather=8))
    mask = np.asarray(squares.mask)
    assert ((mask > 0) & (mask < 255)).sum() > 100  # a soft border
    assert squares.run_card["regenerate"]["classes"] == ["square"]
    everything = np.asarray(tiny_pipeline.generate(scene, replace(BASE, regenerate="objects")).mask)
    assert (mask > 127).sum() < (everything > 127).sum()


def test_all_repaints_everything_and_says_so(tiny_pipeline, scene):
    result = tiny_pipeline.generate(scene, BASE)
    assert np.asarray(result.mask).min() == 255
    assert result.run_card["regenerate"] == {"mode": "all", "mask_source": None, "classes": [], "objects": [],
                                             "repainted_share": 1.0}


def test_no_matching_object_repaints_everything_with_a_warning(tiny_pipeline, scene):
    result = tiny_pipeline.generate(scene, replace(BASE, regenerate="objects", control_classes=(9,)))
    assert any("The whole picture is repainted instead." in w for w in result.warnings)
    assert np.asarray(result.mask).min() == 255


def test_an_inpainting_checkpoint_with_9_channels_keeps_the_outside_too(model_cache, scene):
    pipe = InferencePipeline(settings=Settings(models="tiny", cache_dir=model_cache, device="cpu",
                                               sd15_inpaint_model="tiny"))
    assert pipe.inpaint_unet.config.in_channels == 9
    result = pipe.generate(scene, replace(BASE, regenerate="objects"))
    kept = np.asarray(result.mask) == 0
    assert diff(result, scene)[kept].max() <= 1 and diff(result, scene)[~kept].mean() > 20
    base = InferencePipeline(settings=Settings(models="tiny", cache_dir=model_cache, device="cpu"))
    other = base.generate(scene, replace(BASE, regenerate="objects"))
    assert not np.array_equal(np.asarray(other.images[0]), np.asarray(result.images[0]))  # another UNet painted
    with pytest.raises(InvalidRequestError, match="choose the Quality preset and no style LoRA"):
        pipe.generate(scene, replace(BASE, regenerate="objects", preset="fast", steps=None, guidance_scale=None,
                                     scheduler=None))


def test_the_mask_is_handed_out_with_the_run_only_when_part_of_the_picture_was_repainted(tiny_pipeline, scene):
    from studio.core.downloads import result_files

    partial = tiny_pipeline.generate(scene, replace(BASE, regenerate="background"))
    masks = [name for name in result_files(partial) if name.startswith("mask-")]
    assert len(masks) == 1
    with Image.open(io.BytesIO(result_files(partial)[masks[0]])) as png:
        assert png.mode == "L" and np.array_equal(np.asarray(png), np.asarray(partial.mask))
    assert not any(name.startswith("mask-") for name in result_files(tiny_pipeline.generate(scene, BASE)))


def test_the_base_unet_repaints_with_one_vae_encode_and_the_same_photo_again_with_none(tiny_pipeline, scene,
                                                                                       monkeypatch):
    """The picture's latents, and not the masked picture's (only 9-channel inpainting UNets read those). The
    photo's latent distribution is kept: the same photo repainted again (another seed) is not encoded again and
    gives the pixels of diffusers' own encode."""
    from diffusers import StableDiffusionControlNetInpaintPipeline
    photo = ImageOps.mirror(scene)  # a photo no other test repainted
    calls = []
    hook = tiny_pipeline.pipe.vae.encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        first = tiny_pipeline.generate(photo, replace(BASE, regenerate="objects"))
        again = tiny_pipeline.generate(photo, replace(BASE, regenerate="objects", seed=6))
        encodes = len(calls)
        inpaint = tiny_pipeline.denoiser.inpaint_pipeline()
        monkeypatch.setattr(inpaint, "_encode_vae_image", partial(
            StableDiffusionControlNetInpaintPipeline._encode_vae_image, inpaint))
        fresh = tiny_pipeline.generate(photo, replace(BASE, regenerate="objects", seed=6))
    finally:
        hook.remove()
    assert encodes == 1 and len(calls) == 2
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(fresh.images[0]))
    assert not np.array_equal(np.asarray(first.images[0]), np.asarray(again.images[0]))
