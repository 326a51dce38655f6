"""Speed presets on the tiny models: each generates with its scheduler, steps, CFG and distillation LoRA, beside a
style LoRA; live previews arrive every PREVIEW_EVERY steps; TAESD decodes; prompt embeddings are reused."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from inference_pipeline import InferencePipeline, LoraError
from studio.core.presets import PRESETS, start_preset
from studio.core.request import GenerationRequest, InvalidRequestError
from studio.core.settings import Settings
from studio.engine.live_preview import PREVIEW_EVERY, decode_preview, preview_steps

from helpers import make_lora, pixels

BASE = GenerationRequest(prompt="a red box", resolution=64, seed=21)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_generates_and_its_card_names_scheduler_steps_cfg_and_loras(tiny_pipeline, photo, name):
    preset = PRESETS[name]
    result = tiny_pipeline.generate(photo, replace(BASE, preset=name, steps=None, guidance_scale=None,
                                                   scheduler=None))
    assert len(result.images) == 1 and result.images[0].size == (64, 80)
    card = result.run_card
    assert card["preset"] == name and card["steps_done"] == preset.steps
    assert (card["request"]["scheduler"], card["request"]["steps"], card["request"]["guidance_scale"]) == \
        (preset.scheduler, preset.steps, preset.guidance_scale)
    assert card["scheduler"] == {"unipc": "AsyncUniPCMultistepScheduler", "lcm": "AsyncLCMScheduler",
                                 "tcd": "AsyncTCDScheduler"}[preset.scheduler]
    expected = [{"role": "distillation", "id": "distill-lora/pytorch_lora_weights.safetensors", "weight": 1.0}] \
        if preset.lora else []  # the tiny set's local LoRA, named by its folder
    assert card["loras"] == expected


@pytest.mark.parametrize("name", list(PRESETS))
def test_same_seed_same_pixels_for_every_preset(tiny_pipeline, photo, name):
    """LCM and TCD draw noise every step: from the run's seeded generators, never from the global RNG."""
    import torch

    request = replace(BASE, preset=name, steps=None, guidance_scale=None, scheduler=None)
    torch.manual_seed(1)
    first = pixels(tiny_pipeline.generate(photo, request))
    torch.manual_seed(2)  # another global RNG state: the pixels must not follow it
    assert np.array_equal(pixels(tiny_pipeline.generate(photo, request)), first)


def test_a_preset_fills_only_what_the_request_leaves_open():
    fast = GenerationRequest(preset="fast")
    assert (fast.scheduler, fast.steps, fast.guidance_scale) == ("tcd", 4, 1.0)
    mine = GenerationRequest(preset="fast", steps=8, guidance_scale=1.5)
    assert (mine.scheduler, mine.steps, mine.guidance_scale) == ("tcd", 8, 1.5)
    with pytest.raises(InvalidRequestError, match="preset must be one of quality, fast, turbo"):
        GenerationRequest(preset="ludicrous")


def test_the_page_opens_on_the_preset_set_or_by_the_device(monkeypatch):
    assert [start_preset("auto", gpu) for gpu in (True, False)] == ["quality", "fast"]
    assert [start_preset("turbo", gpu) for gpu in (True, False)] == ["turbo", "turbo"]
    monkeypatch.setenv("START_PRESET", "Fast")
    assert Settings.from_env().start_preset == "fast"
    monkeypatch.setenv("START_PRESET", "custom")
    with pytest.raises(ValueError, match="START_PRESET must be one of auto, quality, fast, turbo, not 'custom'"):
        Settings.from_env()


def test_the_distillation_lora_changes_the_picture(tiny_pipeline, photo):
    request = replace(BASE, scheduler="lcm", steps=4, guidance_scale=1.0)
    without = pixels(tiny_pipeline.generate(photo, request))
    with_lora = pixels(tiny_pipeline.generate(photo, replace(request, preset="fast")))
    assert np.abs(without - with_lora).mean() > 1.0


def test_a_preset_and_a_style_lora_keep_both_adapters_and_clearing_the_style_keeps_the_presets(
        tiny_pipeline, photo, tmp_path):
    import torch

    quality = pixels(tiny_pipeline.generate(photo, BASE))  # earlier tests may have left a LoRA: this drops it
    base_weights = {k: v.clone() for k, v in tiny_pipeline.pipe.unet.state_dict().items()}
    style = str(make_lora(tiny_pipeline.model_ids["sd15"] + "/unet", tmp_path))
    fast = replace(BASE, preset="fast", steps=None, guidance_scale=None, scheduler=None)
    alone = pixels(tiny_pipeline.generate(photo, fast))
    styled = tiny_pipeline.generate(photo, replace(fast, lora=style, lora_weight=1.0))
    assert sorted(tiny_pipeline.loras.active) == ["distill", "style"]
    assert [lora["role"] for lora in styled.run_card["loras"]] == ["distillation", "style"]
    assert np.abs(pixels(styled) - alone).mean() > 1.0
    # fused: plain layers, no adapter code left in the UNet's forward
    assert not any("lora" in name for name, _ in tiny_pipeline.pipe.unet.named_modules())
    again = pixels(tiny_pipeline.generate(photo, fast))
    assert list(tiny_pipeline.loras.active) == ["distill"]
    assert np.array_equal(again, alone)
    assert np.array_equal(pixels(tiny_pipeline.generate(photo, BASE)), quality)
    assert tiny_pipeline.loras.active == {}
    assert all(torch.equal(v, base_weights[k]) for k, v in tiny_pipeline.pipe.unet.state_dict().items())


def test_previews_arrive_every_few_steps_from_taesd(tiny_pipeline, photo):
    seen = []
    result = tiny_pipeline.generate(photo, replace(BASE, steps=10),
                                    on_preview=lambda step, image: seen.append((step, image)))
    assert [step for step, _ in seen] == preview_steps(10) == [3, 6, 9]
    assert PREVIEW_EVERY == 3
    assert all(image.size == result.images[0].size and image.mode == "RGB" for _, image in seen)
    assert len({image.tobytes() for _, image in seen}) == 3  # each shows its own step


def test_without_taesd_previews_use_the_linear_latent_map(tiny_pipeline):
    import torch

    latents = torch.zeros(1, 4, 8, 10)
    latents[0, 0] = 2.0
    cheap = np.asarray(decode_preview(latents, None, (80, 64)))
    assert cheap.shape == (64, 80, 3)
    # channel 0's factors (0.298, 0.207, 0.208) times 2, from [-1, 1] to 8 bits, everywhere
    assert (cheap == cheap[0, 0]).all() and cheap[0, 0].tolist() == [203, 180, 181]
    tiny = decode_preview(latents, tiny_pipeline.taesd, (80, 64))
    assert tiny.size == (80, 64) and not np.array_equal(np.asarray(tiny), cheap)


def test_a_taesd_final_decode_gives_a_picture_of_the_right_size(tiny_pipeline, photo):
    full = tiny_pipeline.generate(photo, replace(BASE, preset="turbo", steps=None, guidance_scale=None,
                                                 scheduler=None, num_images=2))
    fast = tiny_pipeline.generate(photo, replace(BASE, preset="turbo", steps=None, guidance_scale=None,
                                                 scheduler=None, num_images=2, fast_decode=True))
    assert [image.size for image in fast.images] == [(64, 80), (64, 80)]
    assert fast.run_card["decoder"] == "TAESD" and full.run_card["decoder"] == "VAE"
    assert np.abs(pixels(fast) - pixels(full)).mean() > 1.0  # another decoder, another picture


def test_prompt_embeddings_are_computed_once_per_prompt_and_again_after_a_lora_change(tiny_pipeline, photo,
                                                                                     tmp_path):
    calls = []
    hook = tiny_pipeline.pipe.text_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        request = replace(BASE, prompt="a blue house", steps=2)
        tiny_pipeline.generate(photo, request)
        first = len(calls)
        assert first == 2  # the prompt and the negative prompt
        tiny_pipeline.generate(photo, replace(request, seed=5))
        assert len(calls) == first
        tiny_pipeline.generate(photo, replace(request, guidance_scale=1.0))  # no CFG: the prompt alone
        assert len(calls) == first + 1
        style = str(make_lora(tiny_pipeline.model_ids["sd15"] + "/unet", tmp_path))
        tiny_pipeline.generate(photo, replace(request, lora=style))
        assert len(calls) == first + 3
    finally:
        hook.remove()


def test_a_missing_distillation_lora_says_how_to_fetch_it(model_cache, photo):
    """Real-model settings (local folders) whose Fast LoRA is a Hub id that is not cached, with no Hub: the app
    starts, and the preset says what to do."""
    from studio.engine import tiny_models

    paths = tiny_models.ensure_tiny_models(model_cache)
    pipe = InferencePipeline(settings=Settings(models="sd15", sd15_model=str(paths.sd15), controlnet_model=str(
        paths.controlnet), yolo_model=str(paths.yolo), taesd_model=None, preset_lora_fast="someone/uncached-tcd-lora",
        cache_dir=model_cache, device="cpu"))
    assert "fast" in pipe.missing_loras and "fast" not in pipe.distill_loras
    with pytest.raises(LoraError, match=r"'someone/uncached-tcd-lora' is not available here \(it is not in the local "
                                        r"Hugging Face cache.*launch.py --prefetch.*Quality preset"):
        pipe.generate(photo, replace(BASE, preset="fast"))
    assert pixels(pipe.generate(photo, BASE)).size  # the base model still works


def test_switching_presets_never_asks_the_hub(tiny_pipeline, photo, monkeypatch):
    """The distillation LoRAs are local files from the start: a switch under the GPU lock reads a file."""
    import huggingface_hub

    from studio.engine import loading

    def no_network(*args, **kwargs):
        raise AssertionError("a preset switch asked the Hub")

    for name in ("hf_hub_download", "snapshot_download", "model_info"):
        monkeypatch.setattr(huggingface_hub, name, no_network)
    monkeypatch.setattr(loading, "hub_reachable", no_network)
    for preset in ("quality", "fast", "turbo", "quality"):
        result = tiny_pipeline.generate(photo, replace(BASE, preset=preset, steps=None, guidance_scale=None,
                                                       scheduler=None))
        assert result.images and result.run_card["preset"] == preset


def test_switching_back_to_a_preset_reuses_its_fused_weights(tiny_pipeline, photo, monkeypatch, tmp_path):
    """The weights a set changed are kept: the second switch to Fast copies them instead of loading the LoRA
    again, and gives the same pixels; Quality gets the base weights back exactly."""
    fast = replace(BASE, preset="fast", steps=None, guidance_scale=None, scheduler=None)
    quality = pixels(tiny_pipeline.generate(photo, BASE))
    first = pixels(tiny_pipeline.generate(photo, fast))
    loads = []
    original = tiny_pipeline._load_lora
    monkeypatch.setattr(tiny_pipeline, "_load_lora", lambda *args: loads.append(args) or original(*args))
    assert np.array_equal(pixels(tiny_pipeline.generate(photo, BASE)), quality)
    assert np.array_equal(pixels(tiny_pipeline.generate(photo, fast)), first)
    assert loads == [], "no LoRA was loaded again"
    styled = replace(fast, lora=str(make_lora(tiny_pipeline.model_ids["sd15"] + "/unet", tmp_path)))
    tiny_pipeline.generate(photo, styled)  # a new set: loaded and fused
    assert [adapter for _, adapter in loads] == ["distill", "style"] and len(tiny_pipeline.loras._fused) <= 2


@pytest.mark.parametrize("scheduler, lora", [("lcm", "distill-lora/pytorch_lora_weights.safetensors"),
                                             ("tcd", "distill-lora/pytorch_lora_weights.safetensors"),
                                             ("unipc", None), ("ddim", None)])
def test_custom_runs_lcm_and_tcd_with_their_distillation_lora_and_the_others_without(tiny_pipeline, photo,
                                                                                    scheduler, lora):
    from studio.core.presets import distilled_by

    request = replace(BASE, preset="custom", scheduler=scheduler, steps=3, guidance_scale=1.5)
    card = tiny_pipeline.generate(photo, request).run_card
    assert card["preset"] == "custom" and card["steps_done"] == 3 and card["request"]["guidance_scale"] == 1.5
    assert card["loras"] == ([{"role": "distillation", "id": lora, "weight": 1.0}] if lora else [])
    assert distilled_by("custom", scheduler) == {"lcm": "turbo", "tcd": "fast"}.get(scheduler)
    assert distilled_by("quality", "lcm") is None and distilled_by("fast", "unipc") == "fast"
