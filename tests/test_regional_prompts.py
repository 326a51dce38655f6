"""Regional prompts in one denoise: each object's prompt acts inside its mask through cross-attention per region, on a
diffusers attention layer and on the tiny models with the fixture detector's sample scene."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from inference_pipeline import GenerationRequest
from studio.core.png_info import from_parameters
from studio.core.run_card import a1111_parameters
from studio.engine.regional_attention import RegionalAttention, attention_layers, region_weights, regional

from helpers import pixels

BASE = dict(prompt="a toy", steps=4, resolution=128, seed=5, regenerate="objects", objects=(0, 1, 3))


def test_region_weights_follow_the_unets_levels_and_sum_to_one():
    masks = torch.zeros(2, 15, 21)
    masks[1, :, :10] = 1.0
    masks[0] = 1.0 - masks[1]
    full = region_weights(masks, 15 * 21)
    assert full.shape == (2, 1, 315, 1) and torch.equal(full[1, 0, :21, 0], (torch.arange(21) < 10).float())
    coarse = region_weights(masks, 8 * 11)  # one level down: each side halved, rounded up
    assert coarse.shape == (2, 1, 88, 1) and torch.allclose(coarse.sum(dim=0), torch.ones(1, 88, 1))
    with pytest.raises(ValueError, match="no UNet level"):
        region_weights(masks, 100)


def test_a_pixel_gets_exactly_the_attention_of_its_regions_prompt():
    torch.manual_seed(0)
    layer = Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8).eval()
    base = AttnProcessor2_0()
    pixels_in = torch.randn(1, 6 * 4, 16)  # a 6x4 latent
    main, other = torch.randn(1, 77, 8), torch.randn(1, 77, 8)
    masks = torch.zeros(2, 6, 4)
    masks[0, :3], masks[1, 3:] = 1.0, 1.0  # the top half: the main prompt; the bottom half: the other
    with torch.no_grad():
        mixed = RegionalAttention(base)(layer, pixels_in, torch.cat([main, other], dim=1), region_masks=masks)
        alone = [base(layer, pixels_in, prompt) for prompt in (main, other)]
        plain = RegionalAttention(base)(layer, pixels_in, main)
    assert torch.allclose(mixed[:, :12], alone[0][:, :12], atol=1e-6)
    assert torch.allclose(mixed[:, 12:], alone[1][:, 12:], atol=1e-6)
    assert not torch.allclose(alone[0][:, 12:], alone[1][:, 12:], atol=1e-3)
    assert torch.equal(plain, alone[0])  # no masks: the installed processor, untouched
    layer.norm_cross = torch.nn.LayerNorm(8)  # a layer the shared query does not fit: a processor call per region
    with torch.no_grad():
        mixed = RegionalAttention(base)(layer, pixels_in, torch.cat([main, other], dim=1), region_masks=masks)
        alone = [base(layer, pixels_in, prompt) for prompt in (main, other)]
    assert torch.allclose(mixed[:, :12], alone[0][:, :12], atol=1e-6)
    assert torch.allclose(mixed[:, 12:], alone[1][:, 12:], atol=1e-6)


def test_regional_swaps_the_layers_diffusers_lists_and_gives_their_processors_back(tiny_pipeline):
    """Tripwire: `attention_layers` copies diffusers' rule for what has a processor (`attn_processors`)."""
    unet = tiny_pipeline.pipe.unet
    before = unet.attn_processors
    assert [layer.processor for layer in attention_layers(unet)] == list(before.values())
    with regional(unet):
        inside = unet.attn_processors
    assert all(isinstance(p, RegionalAttention) for p in inside.values()) and inside.keys() == before.keys()
    assert [p.processor for p in inside.values()] == list(before.values())
    assert all(unet.attn_processors[name] is processor for name, processor in before.items())
    with pytest.raises(RuntimeError), regional(unet):
        raise RuntimeError("a failed denoise")
    assert all(unet.attn_processors[name] is processor for name, processor in before.items())


def test_a_pass_of_three_objects_measures_its_seam_once(tiny_pipeline, scene, found, monkeypatch):
    from studio.engine import repainting

    measured = []
    monkeypatch.setattr(repainting, "seam_score", lambda *args: measured.append(args) or 1.5)
    request = GenerationRequest(**{**BASE, "steps": 1}, object_prompt_mode="one_pass", object_prompts={1: "a box"})
    card = tiny_pipeline.generate(scene, request, detections=found).run_card
    assert len(measured) == 1 and [entry["seam"] for entry in card["objects"]] == [1.5, 1.5, 1.5]


def count_unet_calls(pipeline) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    calls: list[int] = []
    return calls, pipeline.pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(1))


def test_three_objects_with_two_prompts_take_one_denoise_and_each_prompt_acts_in_its_own_region(
        tiny_pipeline, scene, found):
    calls, handle = count_unet_calls(tiny_pipeline)
    results = {}
    try:
        for mode in ("pass_each", "one_pass"):
            for name, prompts in (("bus", {1: "red box", 3: "blue cottage"}), ("tree", {1: "green tree",
                                                                                    3: "blue cottage"})):
                calls.clear()
                request = GenerationRequest(**BASE, object_prompt_mode=mode, object_prompts=prompts)
                results[mode, name] = tiny_pipeline.generate(scene, request, detections=found)
                results[mode, name, "calls"] = len(calls)
    finally:
        handle.remove()
    assert results["pass_each", "bus", "calls"] == 3 * BASE["steps"]  # the shared objects' pass, then one each
    assert results["one_pass", "bus", "calls"] == BASE["steps"]  # one denoise (CFG's two halves in one call)
    card = results["one_pass", "bus"].run_card
    assert [(e["id"], e["prompt"], e["one_pass"]) for e in card["objects"]] == [
        (0, "a toy", True), (1, "red box", True), (3, "blue cottage", True)]
    assert card["request"]["object_prompt_mode"] == "one_pass"
    text = a1111_parameters(card)
    assert "RP Active: True" in text and "RP Calc Mode: Attention" in text
    assert from_parameters(text).values["object_prompt_mode"] == "one_pass"
    assert "RP Active" not in a1111_parameters(results["pass_each", "bus"].run_card)
    request = GenerationRequest(**BASE, object_prompt_mode="one_pass", object_prompts={1: "red box", 3: "blue"})
    plan = tiny_pipeline.preview_from(scene, found, request).passes
    assert len(plan) == 1 and [region.prompt for region in plan[0].regions] == ["red box", "blue"]
    changed = np.abs(pixels(results["one_pass", "bus"])[0] - pixels(results["one_pass", "tree"])[0]).mean(axis=-1)
    inside = [np.asarray(region.mask) > 128 for region in plan[0].regions]
    assert changed[inside[0]].mean() > 2.5 * changed[inside[1]].mean()  # object 1's prompt changed, 3's did not
    outside = np.asarray(plan[0].mask) == 0
    picture = np.asarray(plan[0].crop(tiny_pipeline.preview_from(scene, found, request).picture), np.int16)
    assert np.array_equal(pixels(results["one_pass", "bus"])[0][outside], picture[outside])
