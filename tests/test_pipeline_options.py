"""Schedulers and the style LoRA on the tiny models."""

from __future__ import annotations

import numpy as np
import pytest

from inference_pipeline import GenerationRequest, LoraError
from studio.core.catalog import SCHEDULERS

from helpers import make_lora, pixels


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_generates_and_is_named_in_the_run_card(tiny_pipeline, photo, scheduler):
    request = GenerationRequest(steps=3, resolution=64, seed=4, scheduler=scheduler)
    first, again = tiny_pipeline.generate(photo, request), tiny_pipeline.generate(photo, request)
    assert np.array_equal(pixels(first), pixels(again))
    expected = {"unipc": "AsyncUniPCMultistepScheduler", "dpmpp_2m_karras": "DPMSolverMultistepScheduler",
                "euler_a": "EulerAncestralDiscreteScheduler", "ddim": "DDIMScheduler", "lcm": "AsyncLCMScheduler",
                "tcd": "AsyncTCDScheduler"}[scheduler]
    assert first.run_card["scheduler"] == expected and first.run_card["request"]["scheduler"] == scheduler


def test_schedulers_give_different_pictures(tiny_pipeline, photo):
    unipc = tiny_pipeline.generate(photo, GenerationRequest(steps=3, resolution=64, seed=4))
    euler = tiny_pipeline.generate(photo, GenerationRequest(steps=3, resolution=64, seed=4, scheduler="euler_a"))
    assert np.abs(pixels(unipc) - pixels(euler)).max() > 5


def test_lora_changes_the_picture_its_weight_matters_and_clearing_restores_the_base(tiny_pipeline, photo,
                                                                                   tmp_path):
    lora = make_lora(tiny_pipeline.model_ids["sd15"] + "/unet", tmp_path)
    base_request = GenerationRequest(prompt="a box", steps=3, resolution=64, seed=9)
    base = pixels(tiny_pipeline.generate(photo, base_request))
    styled = tiny_pipeline.generate(photo, GenerationRequest(prompt="a box", steps=3, resolution=64, seed=9,
                                                             lora=str(lora), lora_weight=1.0))
    assert np.abs(pixels(styled) - base).max() > 10
    assert styled.run_card["request"]["lora"] == f"{lora.parent.name}/{lora.name}"  # names, not the server's path
    lighter = pixels(tiny_pipeline.generate(photo, GenerationRequest(prompt="a box", steps=3, resolution=64,
                                                                     seed=9, lora=str(lora), lora_weight=0.2)))
    assert 0 < np.abs(lighter - base).max() < np.abs(pixels(styled) - base).max()
    assert np.array_equal(pixels(tiny_pipeline.generate(photo, base_request)), base)


def test_lora_that_does_not_fit_gets_a_clear_message_and_the_base_keeps_working(tiny_pipeline, photo, tmp_path):
    wrong = make_lora(tiny_pipeline.model_ids["sd15"] + "/unet", tmp_path, cross_attention_dim=48)
    request = GenerationRequest(steps=2, resolution=64, seed=3)
    base = pixels(tiny_pipeline.generate(photo, request))
    with pytest.raises(LoraError, match="cannot be used with this SD1.5 model") as error:
        tiny_pipeline.generate(photo, GenerationRequest(steps=2, resolution=64, seed=3, lora=str(wrong)))
    assert wrong.name in str(error.value) and str(wrong.parent) not in str(error.value)
    assert not tiny_pipeline.busy
    assert np.array_equal(pixels(tiny_pipeline.generate(photo, request)), base)


def test_lora_files_other_than_safetensors_are_refused(tiny_pipeline, photo, tmp_path):
    pickled = tmp_path / "style.bin"
    pickled.write_bytes(b"not loaded")
    with pytest.raises(LoraError, match="only .safetensors"):
        tiny_pipeline.generate(photo, GenerationRequest(steps=1, resolution=64, seed=1, lora=str(pickled)))


def test_schedulers_do_not_inherit_each_others_settings(tiny_pipeline, model_cache, photo):
    """DPM++ 2M Karras turns on Karras sigmas; a UniPC first built after it must not pick them up."""
    from inference_pipeline import InferencePipeline
    from studio.core.settings import Settings

    request = GenerationRequest(steps=3, resolution=64, seed=4)
    expected = pixels(tiny_pipeline.generate(photo, request))
    fresh = InferencePipeline(settings=Settings(models="tiny", cache_dir=model_cache, device="cpu"))
    fresh.generate(photo, GenerationRequest(steps=3, resolution=64, seed=4, scheduler="dpmpp_2m_karras"))
    assert not fresh._scheduler("unipc").config.get("use_karras_sigmas", False)
    assert np.array_equal(pixels(fresh.generate(photo, request)), expected)
