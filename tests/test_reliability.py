"""Faults at the model boundary (out of memory, NaN decodes) and concurrent callers, on the CPU."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from inference_pipeline import GenerationError, GenerationRequest
from studio.core.control_image import build_control_image, place_image

from helpers import pixels

OOM_MESSAGE = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 14.74 GiB"


@pytest.fixture
def oom_unet(tiny_pipeline):
    """Make the UNet raise the real out-of-memory error while `fails(sample)` says so."""
    unet = tiny_pipeline.pipe.unet
    original = unet.forward
    state = {"fails": lambda sample: False, "raised": 0}

    def forward(sample, *args, **kwargs):
        if state["fails"](sample):
            state["raised"] += 1
            raise torch.cuda.OutOfMemoryError(OOM_MESSAGE)
        return original(sample, *args, **kwargs)

    unet.forward = forward
    yield state
    del unet.forward


def processors(pipe) -> set[type]:
    return {type(p) for p in pipe.unet.attn_processors.values()}


def test_one_oom_is_recovered_with_attention_slicing_and_everything_is_undone(tiny_pipeline, photo, oom_unet):
    request = GenerationRequest(steps=2, resolution=64, seed=8)
    baseline = pixels(tiny_pipeline.generate(photo, request))
    oom_unet["fails"] = lambda sample: oom_unet["raised"] == 0
    result = tiny_pipeline.generate(photo, request)
    assert oom_unet["raised"] == 1 and result.images
    assert result.warnings == ["The GPU ran out of memory; the run succeeded with attention slicing."]
    assert np.abs(pixels(result) - baseline).max() <= 2
    assert processors(tiny_pipeline.pipe) == {AttnProcessor2_0} and not tiny_pipeline.pipe.vae.use_tiling
    assert np.array_equal(pixels(tiny_pipeline.generate(photo, request)), baseline)


def test_persistent_oom_walks_the_chain_down_to_a_smaller_size(tiny_pipeline, photo, oom_unet):
    request = GenerationRequest(steps=2, resolution=128, seed=8)
    baseline = pixels(tiny_pipeline.generate(photo, request))
    oom_unet["fails"] = lambda sample: sample.shape[-1] >= 16  # 128 px = 16 latents; only a smaller size fits
    result = tiny_pipeline.generate(photo, request)
    assert result.images[0].size == (96, 112) and result.control_image.size == (96, 112)
    control = np.asarray(result.control_image)
    assert set(np.unique(control)) <= {0, 255}, "the smaller control image is an edge map, not a blurred one"
    expected = build_control_image(place_image(photo, (96, 112), request.resize_mode)[0], low=request.canny_low,
                                   high=request.canny_high)
    assert np.array_equal(control, np.asarray(expected)), "Canny of the photo at the new size"
    assert result.warnings == ["The GPU ran out of memory; the run succeeded with attention slicing, VAE tiling, "
                               "a smaller size (96x112)."]
    assert oom_unet["raised"] == 3  # full size, with slicing, with tiling; CPU offload is skipped on the CPU
    oom_unet["fails"] = lambda sample: False
    assert np.array_equal(pixels(tiny_pipeline.generate(photo, request)), baseline)


def test_oom_that_nothing_cures_says_what_was_tried_and_frees_the_lock(tiny_pipeline, photo, oom_unet):
    oom_unet["fails"] = lambda sample: True
    with pytest.raises(GenerationError, match="even with attention slicing, VAE tiling, a smaller size"):
        tiny_pipeline.generate(photo, GenerationRequest(steps=1, resolution=64, seed=1))
    assert not tiny_pipeline.busy
    assert processors(tiny_pipeline.pipe) == {AttnProcessor2_0}


def test_a_nan_decode_is_retried_in_float32(tiny_pipeline, photo, monkeypatch):
    vae = tiny_pipeline.pipe.vae
    decode, calls = vae.decode, []

    def overflowing_decode(latents, *args, **kwargs):
        calls.append(latents.dtype)
        out = decode(latents, *args, **kwargs)
        return (torch.full_like(out[0], float("nan")),) if len(calls) == 1 else out

    monkeypatch.setattr(vae, "decode", overflowing_decode)
    result = tiny_pipeline.generate(photo, GenerationRequest(steps=2, resolution=64, seed=3))
    assert len(calls) == 2 and calls[1] == torch.float32
    assert result.warnings == ["The VAE decode gave NaN or an all-black picture; it was decoded again in float32."]
    assert np.asarray(result.images[0]).max() > 0


def test_concurrent_callers_each_get_their_sequential_result_and_the_lock_ends_free(tiny_pipeline, photo):
    seeds = [11, 12, 13, 14]
    expected = {s: pixels(tiny_pipeline.generate(photo, GenerationRequest(steps=2, resolution=64, seed=s)))
                for s in seeds}
    results, errors = {}, []

    def call(seed: int) -> None:
        try:
            if seed == 13:  # one caller cancels at its first step
                results[seed] = tiny_pipeline.generate(photo, GenerationRequest(steps=2, resolution=64, seed=seed),
                                                       should_cancel=lambda: True)
            elif seed == 14:  # and one asks for something impossible
                tiny_pipeline.generate(photo, GenerationRequest(steps=2, resolution=64, seed=seed,
                                                                lora="/nowhere/style.bin"))
            else:
                results[seed] = tiny_pipeline.generate(photo, GenerationRequest(steps=2, resolution=64, seed=seed))
        except Exception as exc:  # noqa: BLE001  (collected and checked below)
            errors.append((seed, exc))

    threads = [threading.Thread(target=call, args=(s,)) for s in seeds * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert all(not t.is_alive() for t in threads)
    assert {seed for seed, _ in errors} == {14}
    assert np.array_equal(pixels(results[11]), expected[11]) and np.array_equal(pixels(results[12]), expected[12])
    assert results[13].cancelled and results[13].images == []
    assert not tiny_pipeline.busy


@pytest.mark.parametrize("threshold, flagged", [(-10.0, True), (10.0, False)])
def test_the_safety_checker_flags_are_reported_not_shown_as_black(model_cache, photo, threshold, flagged):
    """The real checker code with the tiny checker; its concept thresholds decide, as in SD1.5's."""
    from inference_pipeline import InferencePipeline
    from studio.core.settings import Settings

    pipe = InferencePipeline(settings=Settings(models="tiny", cache_dir=model_cache, device="cpu",
                                               safety_checker=True))
    assert pipe.pipe.safety_checker is not None
    with torch.no_grad():
        pipe.pipe.safety_checker.concept_embeds_weights.fill_(threshold)
        pipe.pipe.safety_checker.special_care_embeds_weights.fill_(threshold)
    result = pipe.generate(photo, GenerationRequest(steps=1, resolution=64, seed=1, num_images=2))
    assert result.flagged == [flagged, flagged] and result.run_card["flagged"] == result.flagged
    notes = [w for w in result.warnings if "safety checker" in w]
    assert len(notes) == (2 if flagged else 0)


def test_the_safety_checker_is_off_by_default(tiny_pipeline, photo):
    assert tiny_pipeline.pipe.safety_checker is None
    assert tiny_pipeline.generate(photo, GenerationRequest(steps=1, resolution=64, seed=1)).flagged == [False]
