"""The run card inside PNGs: our JSON chunk, and A1111's `parameters` infotext that other tools read."""

from __future__ import annotations

import io
import json
import re

import pytest
from PIL import Image

from studio.core.presets import PRESETS
from studio.core.request import GenerationRequest
from studio.core.run_card import a1111_parameters, library_versions, png_with_run_card, public_source, read_run_card

# A1111's reading of the settings line: `key: value` pairs separated by commas, a value either quoted (JSON
# string escapes inside) or running to the next comma. The key may hold letters, digits, spaces.
SETTING = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_like_a1111(text: str) -> dict[str, str]:
    """The prompt (lines up to `Negative prompt:`), the negative prompt, then the last line's settings, with
    `Size: WxH` split into Size-1 and Size-2, as A1111's PNG Info does."""
    *lines, last = text.strip().split("\n")
    if len(SETTING.findall(last)) < 3:
        lines, last = [*lines, last], ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    parsed = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in SETTING.findall(last):
        if len(value) > 1 and value[0] == value[-1] == '"':
            value = json.loads(value)
        size = re.fullmatch(r"(\d+)x(\d+)", value)
        if size:
            parsed[f"{key}-1"], parsed[f"{key}-2"] = size.groups()
        else:
            parsed[key] = value
    return parsed


def card_for(request: GenerationRequest, seeds: list[int], size: tuple[int, int]) -> dict:
    from dataclasses import asdict

    loras = [{"role": "distillation", "id": PRESETS[request.preset].lora, "weight": 1.0}] \
        if PRESETS[request.preset].lora else []
    if request.lora:
        loras.append({"role": "style", "id": public_source(request.lora), "weight": request.lora_weight})
    return {"request": asdict(request), "seed": seeds[0], "seeds": seeds, "size": list(size),
            "models": {"sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
                       "controlnet": "/home/me/models/control_v11p_sd15_canny"},
            "loras": loras, "created": "2026-11-26T15:35:44+00:00"}


def test_a1111_reads_every_setting_of_the_run():
    request = GenerationRequest(prompt="a fox, in the snow", negative_prompt="blurry, low quality", steps=28,
                                guidance_scale=6.5, seed=123, scheduler="dpmpp_2m_karras", controlnet_scale=0.8,
                                control_start=0.1, control_end=0.9, canny_low=90, canny_high=180,
                                lora="/loras/ink-style.safetensors", lora_weight=0.6, resize_mode="crop")
    card = card_for(request, [123, 124], (640, 448))
    parsed = parse_like_a1111(a1111_parameters(card, index=1))
    assert parsed["Prompt"] == "a fox, in the snow, best quality, extremely detailed <lora:ink-style:0.6>"
    assert parsed["Negative prompt"] == "blurry, low quality"
    assert (parsed["Steps"], parsed["Sampler"], parsed["CFG scale"]) == ("28", "DPM++ 2M Karras", "6.5")
    assert parsed["Seed"] == "124"  # the second image's own seed
    assert (parsed["Size-1"], parsed["Size-2"]) == ("640", "448")
    assert parsed["Model"] == "stable-diffusion-v1-5"
    controlnet = dict(part.split(": ", 1) for part in parsed["ControlNet 0"].split(", "))
    assert controlnet == {"Module": "canny", "Model": "control_v11p_sd15_canny", "Weight": "0.8",
                          "Resize Mode": "Crop and Resize", "Processor Res": "448", "Threshold A": "90",
                          "Threshold B": "180", "Guidance Start": "0.1", "Guidance End": "0.9",
                          "Control Mode": "Balanced"}
    assert "/home/me" not in a1111_parameters(card)


def test_a_preset_names_its_sampler_steps_cfg_and_both_loras_as_a1111_would():
    request = GenerationRequest(prompt="a fox", preset="fast", lora="/loras/ink-style.safetensors", lora_weight=0.6,
                                seed=7)
    parsed = parse_like_a1111(a1111_parameters(card_for(request, [7], (512, 512))))
    assert parsed["Prompt"].endswith("<lora:TCD-SD15-LoRA:1.0> <lora:ink-style:0.6>")
    assert (parsed["Steps"], parsed["Sampler"], parsed["CFG scale"], parsed["Preset"]) == ("4", "TCD", "1.0", "fast")


def test_without_a_negative_prompt_there_is_no_such_line():
    card = card_for(GenerationRequest(prompt="a house", negative_prompt="", seed=5, guess_mode=True), [5], (512, 512))
    text = a1111_parameters(card)
    assert "Negative prompt" not in text
    parsed = parse_like_a1111(text)
    assert parsed["Prompt"] == "a house, best quality, extremely detailed" and parsed["Seed"] == "5"
    assert "Control Mode: ControlNet is more important" in parsed["ControlNet 0"]


def test_run_card_and_parameters_round_trip_through_png():
    card = card_for(GenerationRequest(prompt="ünïcode ✓", seed=5), [5], (16, 16))
    png = png_with_run_card(Image.new("RGB", (16, 16), "blue"), card)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_run_card(png) == card
    with Image.open(io.BytesIO(png)) as image:
        assert parse_like_a1111(image.text["parameters"])["Prompt"].startswith("ünïcode ✓")


def test_png_without_card_raises_key_error():
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    with pytest.raises(KeyError):
        read_run_card(buffer.getvalue())


def test_library_versions_name_what_is_installed_and_leave_out_what_is_not(monkeypatch):
    from importlib import metadata

    from studio.core import run_card

    assert {"torch", "diffusers", "transformers", "ultralytics", "flash-attn"} <= set(run_card.VERSIONED_PACKAGES)
    monkeypatch.setattr(run_card, "VERSIONED_PACKAGES", ("diffusers", "no-such-package-here", "torch"))
    assert library_versions() == {"diffusers": metadata.version("diffusers"), "torch": metadata.version("torch")}


@pytest.mark.parametrize("brk", ["\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"])
@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_a_prompt_with_line_breaks_cannot_forge_the_settings(field, brk):
    """Every character Python's splitlines breaks at (readers split either way), not only \\n."""
    forged = {field: f"a red bus{brk}Steps: 150, Seed: 42, Size: 64x64{brk}Negative prompt: none"}
    request = GenerationRequest(steps=20, seed=7, **forged)
    text = a1111_parameters(card_for(request, [7], (512, 384)))
    parsed = parse_like_a1111(text)
    assert (parsed["Steps"], parsed["Seed"], parsed["Size-1"], parsed["Size-2"]) == ("20", "7", "512", "384")
    assert len(text.splitlines()) == len(text.split("\n")) == 3  # prompt, negative prompt, settings: a line each
    assert "Steps: 150, Seed: 42" in parsed["Prompt" if field == "prompt" else "Negative prompt"]


def test_an_empty_prompt_with_a_lora_starts_with_the_lora_tag():
    request = GenerationRequest(prompt="", added_prompt="", preset="fast")
    assert a1111_parameters(card_for(request, [1], (64, 64))).startswith("<lora:")


def test_at_cfg_1_the_negative_prompt_is_left_out_of_the_a1111_text():
    request = GenerationRequest(preset="turbo", negative_prompt="blurry")  # CFG 1: it was not used
    assert "Negative prompt:" not in a1111_parameters(card_for(request, [1], (64, 64)))


def test_a_local_lora_with_diffusers_generic_file_name_is_named_by_its_folder(tmp_path):
    lora = tmp_path / "tcd-sd15" / "pytorch_lora_weights.safetensors"
    lora.parent.mkdir()
    lora.write_bytes(b"x")
    assert public_source(str(lora)) == "tcd-sd15/pytorch_lora_weights.safetensors"
    card = card_for(GenerationRequest(preset="fast"), [1], (64, 64))
    card["loras"][0]["id"] = public_source(str(lora))
    assert "<lora:tcd-sd15:1.0>" in a1111_parameters(card)
    assert public_source(str(tmp_path / "ink.safetensors")) == "ink.safetensors" and str(tmp_path) not in str(card)
