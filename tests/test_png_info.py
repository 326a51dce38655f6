"""PNG Info (studio/core/png_info.py and its panel): a PNG's settings read back, this app's exactly, A1111's as far
as they map, the rest listed with why."""

from __future__ import annotations

import io
import random
import time
import zlib

import pytest
from PIL import Image, PngImagePlugin

from studio.core.errors import InvalidImageError
from studio.core.png_info import (LORA_TAG, PARAM, from_parameters, lora_tag_spans, read_png_info, settings_pairs,
                                  style_lora)
from studio.core.png_text import MAX_TEXT_CHARS
from studio.serving import history

from helpers import OUTPUTS, app_page
from test_app import wait_for_the_job

# Real-looking infotexts as A1111 1.6 (ControlNet extension, two LoRAs) and 1.9 (schedule type, hires fix,
# ADetailer) write them.
A1111_CONTROLNET = (
    "masterpiece, a red bus in the snow, <lora:add_detail:0.6>, <lora:watercolor_v2:0.8>\n"
    "Negative prompt: lowres, bad anatomy, watermark\n"
    'Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 3094711532, Size: 512x768, Model hash: 6ce0161689, '
    'Model: v1-5-pruned-emaonly, Clip skip: 2, ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny '
    "[d14c016b], Weight: 0.85, Resize Mode: Crop and Resize, Low Vram: False, Processor Res: 512, Threshold A: 80, "
    "Threshold B: 160, Guidance Start: 0.1, Guidance End: 0.9, Pixel Perfect: True, Control Mode: Balanced, "
    'Hr Option: Both, Save Detected Map: True", ControlNet 1: "Module: openpose_full, Model: '
    'control_v11p_sd15_openpose [cab727d4], Weight: 1", Lora hashes: "add_detail: 7c6bad76eb54, watercolor_v2: '
    '1b2c3d4e5f60", TI hashes: "easynegative: c74b4e810b03", Version: v1.6.0')
A1111_ADETAILER = (
    "portrait of a woman in a red coat, city street at dusk\n"
    "Negative prompt: (worst quality:1.4), blurry\n"
    "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, Size: 512x512, "
    "Model hash: 15012c538f, Model: realisticVisionV51, Denoising strength: 0.45, Hires upscale: 2, Hires steps: 10, "
    "Hires upscaler: R-ESRGAN 4x+, ADetailer model: face_yolov8n.pt, ADetailer confidence: 0.3, "
    "ADetailer dilate erode: 4, ADetailer mask blur: 4, ADetailer denoising strength: 0.4, "
    "ADetailer inpaint only masked: True, ADetailer inpaint padding: 32, ADetailer version: 24.1.2, Version: v1.9.4")
A1111_FOREIGN = ("a castle on a hill\nSteps: 200, Sampler: Heun, CFG scale: 9, Seed: 77, Size: 500x700, "
                 "Face restoration: CodeFormer, Version: v1.5.1")


def png_with_text(**texts: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 150)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def test_an_a1111_text_with_loras_and_controlnet_units_fills_what_maps_and_lists_the_rest():
    found = from_parameters(A1111_CONTROLNET)
    assert found.source == "A1111"
    assert found.values == {
        "prompt": "masterpiece, a red bus in the snow", "added_prompt": "",
        "negative_prompt": "lowres, bad anatomy, watermark", "scheduler": "dpmpp_2m_karras", "steps": 28,
        "guidance_scale": 6.5, "seed": 3094711532, "width": 512, "height": 768, "controlnet_scale": 0.85,
        "resize_mode": "crop", "canny_low": 80, "canny_high": 160, "control_start": 0.1, "control_end": 0.9,
        "guess_mode": False, "preset": "custom"}
    assert found.loras == [("add_detail", 0.6), ("watercolor_v2", 0.8)]
    assert found.unknown == [
        "ControlNet 0 Hr Option: Both (not used here)",
        "ControlNet 1: Module: openpose_full, Model: control_v11p_sd15_openpose [cab727d4], Weight: 1 (one Canny "
        "ControlNet runs here)",
        "Model hash: 6ce0161689 (this server runs its own model)", "Model: v1-5-pruned-emaonly (this server runs its "
        "own model)", "Clip skip: 2 (not used here)",
        "Lora hashes: add_detail: 7c6bad76eb54, watercolor_v2: 1b2c3d4e5f60 (not used here)",
        "TI hashes: easynegative: c74b4e810b03 (not used here)", "Version: v1.6.0 (not used here)"]


def test_a1111_19s_schedule_type_and_adetailer_fields_map_onto_the_detail_pass():
    found = from_parameters(A1111_ADETAILER)
    assert found.values["scheduler"] == "dpmpp_2m_karras"  # "DPM++ 2M" with "Schedule type: Karras"
    assert found.values["negative_prompt"] == "(worst quality:1.4), blurry"
    assert (found.values["guidance_scale"], found.values["seed"]) == (7.0, 1234567890)
    assert isinstance(found.values["guidance_scale"], float)  # a slider of floats takes no int
    assert found.values["detail_output"] is True
    assert (found.values["detect_conf"], found.values["strength"], found.values["detail_padding"]) == (0.3, 0.4, 32)
    assert "Hires upscale: 2 (not used here)" in found.unknown and "Denoising strength: 0.45 (not used here)" in \
        found.unknown and "ADetailer model: face_yolov8n.pt (not used here)" in found.unknown


def test_values_this_app_cannot_take_are_listed_with_why():
    found = from_parameters(A1111_FOREIGN)
    assert found.values == {"prompt": "a castle on a hill", "added_prompt": "", "negative_prompt": "",
                            "guidance_scale": 9.0, "seed": 77, "preset": "custom"}
    assert "Sampler: Heun (not offered here)" in found.unknown
    assert "Steps: 200 (steps must lie between 1 and 150, got 200)" in found.unknown
    assert "Size: 500x700 (not used here)" in found.unknown  # not a multiple of 8
    assert "Face restoration: CodeFormer (not used here)" in found.unknown


def test_the_style_lora_is_the_first_one_offered_and_the_others_are_listed():
    found = from_parameters(A1111_CONTROLNET)
    assert style_lora(found, ["styles/add_detail.safetensors"], any_allowed=False) == (
        "styles/add_detail.safetensors", 0.6, ["LoRA watercolor_v2: 0.8 (not offered on this server)"])
    assert style_lora(found, [], any_allowed=False)[0] is None
    assert style_lora(found, [], any_allowed=True) == (
        "add_detail", 0.6, ["LoRA watercolor_v2: 0.8 (one style LoRA runs at a time)"])


def test_a_picture_without_settings_and_a_file_that_is_no_picture_say_so():
    with pytest.raises(InvalidImageError, match="carries no generation settings"):
        read_png_info(png_with_text(Comment="a holiday photo"))
    with pytest.raises(InvalidImageError, match="not a PNG"):
        read_png_info(b"these are my notes")


def test_this_apps_png_round_trips_every_setting_into_the_page(app_env):
    app = app_page().run()
    app.text_area(key="prompt").set_value("a lighthouse at night").run()
    app.text_input(key="added_prompt").set_value("oil painting").run()
    app.text_input(key="negative_prompt").set_value("blurry, text").run()
    app.selectbox(key="scheduler").set_value("ddim").run()  # by hand: the preset becomes Custom
    app.slider(key="guidance_scale").set_value(5.5).run()
    app.toggle(key="randomize_seed").set_value(False).run()
    app.number_input(key="seed").set_value(4242).run()
    app.toggle(key="set_size").set_value(True).run()
    app.slider(key="width").set_value(192).run()
    app.slider(key="height").set_value(128).run()
    app.selectbox(key="resize_mode").set_value("crop").run()
    app.slider(key="controlnet_scale").set_value(0.8).run()
    app.slider(key="control_range").set_value((0.1, 0.9)).run()
    app.checkbox(key="guess_mode").set_value(True).run()
    app.slider(key="canny_low").set_value(80).run()
    app.slider(key="canny_high").set_value(160).run()
    app.slider(key="detect_conf").set_value(0.3).run()
    app.slider(key="steps").set_value(2).run()
    next(b for b in app.button if b.label == "Generate").click().run()
    first = wait_for_the_job(app).session_state["page"].result.run_card
    saved = history.runs(OUTPUTS, None)[0].pictures[0]

    fresh = app_page().run()  # another tab: every widget at its default
    assert fresh.slider(key="steps").value != 2
    fresh.file_uploader(key="png-info").set_value((saved.name, saved.read_bytes(), "image/png")).run()
    assert any("Made by this app" in c.value for c in fresh.caption)
    fresh.button(key="png-info-use").click().run()
    assert not fresh.exception
    next(b for b in fresh.button if b.label == "Generate").click().run()
    second = wait_for_the_job(fresh).session_state["page"].result.run_card
    assert second["request"] == first["request"] and second["seeds"] == first["seeds"]


def test_an_a1111_png_fills_the_page_and_lists_what_it_does_not_use(app_env):
    app = app_page().run()
    app.file_uploader(key="png-info").set_value(("a1111.png", png_with_text(parameters=A1111_CONTROLNET),
                                                 "image/png")).run()
    listed = " ".join(block.value for block in app.code)
    assert "Clip skip: 2 (not used here)" in listed and "LoRA add_detail: 0.6 (not offered on this server)" in listed
    app.button(key="png-info-use").click().run()
    assert not app.exception
    assert app.text_area(key="prompt").value == "masterpiece, a red bus in the snow"
    assert (app.slider(key="steps").value, app.selectbox(key="scheduler").value) == (28, "dpmpp_2m_karras")
    assert app.number_input(key="seed").value == 3094711532 and app.toggle(key="randomize_seed").value is False
    assert app.toggle(key="set_size").value is True and (app.slider(key="width").value,
                                                         app.slider(key="height").value) == (512, 768)
    assert app.slider(key="control_range").value == (0.1, 0.9) and app.slider(key="canny_low").value == 80
    assert app.radio(key="preset").value == "custom"
    app.slider(key="steps").set_value(2).run()
    next(b for b in app.button if b.label == "Generate").click().run()
    card = wait_for_the_job(app).session_state["page"].result.run_card  # the filled page runs
    assert (card["request"]["canny_high"], card["size"], card["seed"]) == (160, [512, 768], 3094711532)


def test_the_linear_parsers_give_a1111s_own_matches_on_random_text():
    """A tripwire for the two rewritten patterns: on random text of the characters that matter, the pairs and tags
    are exactly what A1111's regular expressions find."""
    rng = random.Random(3)
    alphabet = 'ab -/:,"\\\t<lora:>1.'
    for _ in range(5000):
        line = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert settings_pairs(line) == PARAM.findall(line), line
        spans = lora_tag_spans(line)
        assert [(name, weight) for *_, name, weight in spans] == LORA_TAG.findall(line), line
        assert [(start, end) for start, end, *_ in spans] == [m.span() for m in LORA_TAG.finditer(line)], line


def fastest_read(data: bytes) -> float:
    """The best of three reads, in seconds (the first may pay for imports)."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        try:
            read_png_info(data)
        except InvalidImageError:
            pass
        times.append(time.perf_counter() - started)
    return min(times)


HOSTILE = {  # each at the largest text that is read (longer texts are refused unread)
    "a settings line of key characters and no colon": "x\n" + "a" * (MAX_TEXT_CHARS - 2),
    "words and spaces": "x\n" + "ab " * (MAX_TEXT_CHARS // 3 - 1),
    "lora tags that never close": "<lora:x" * (MAX_TEXT_CHARS // 7),
    "one lora tag that never closes": "<lora:" + "a" * (MAX_TEXT_CHARS - 6),
    "quotes that never close": 'k: "a, ' * (MAX_TEXT_CHARS // 7),
    "empty pairs": "a, " * (MAX_TEXT_CHARS // 3),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_png_info_text_is_read_in_under_a_tenth_of_a_second(name):
    """The review's 253-byte PNG (an 80,000-character settings line) held the GIL for 34 s."""
    assert fastest_read(png_with_text(parameters=HOSTILE[name])) < 0.1


def ztxt(key: str, text: bytes) -> bytes:
    body = key.encode() + b"\0\0" + zlib.compress(text, 9)
    return len(body).to_bytes(4, "big") + b"zTXt" + body + zlib.crc32(b"zTXt" + body).to_bytes(4, "big")


def test_a_megabyte_of_compressed_text_in_a_tiny_png_is_refused_unread():
    plain_png = png_with_text()
    bomb = plain_png[:33] + ztxt("parameters", b"a" * 2**20) + plain_png[33:]  # after the IHDR chunk
    assert len(bomb) < 4000
    with pytest.raises(InvalidImageError, match="longer than 64 K characters"):
        read_png_info(bomb)
    assert fastest_read(bomb) < 0.1
    over = png_with_text(parameters="x\n" + "a" * 80_000)  # the review's line: refused, never parsed
    with pytest.raises(InvalidImageError, match="A1111's are a few thousand"):
        read_png_info(over)


def test_png_info_decodes_no_pixel_of_a_large_or_animated_png(decoded):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111_FOREIGN)
    frames = [Image.new("RGB", (3000, 2000), (i * 40, 0, 0)) for i in range(4)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:], pnginfo=info)
    assert read_png_info(buffer.getvalue()).values["seed"] == 77
    assert decoded == []


def test_damaged_pngs_and_run_cards_are_a_message_not_a_crash():
    whole = png_with_text(parameters=A1111_FOREIGN)
    assert read_png_info(whole[:len(whole) - 30]).values["seed"] == 77  # cut inside the pixels: the text came first
    with pytest.raises(InvalidImageError, match="carries no generation settings"):
        read_png_info(whole[:40])
    for card in ("{not json", '{"request": 3, "seeds": [1]}', '{"seeds": [1]}', "[]"):
        with pytest.raises(InvalidImageError, match="run card is damaged"):
            read_png_info(png_with_text(run_card=card))


def test_a_run_cards_values_are_checked_like_any_request():
    card = '{"request": {"steps": 100000, "guidance_scale": 5.5, "scheduler": "no such"}, "seeds": [9]}'
    found = read_png_info(png_with_text(run_card=card))
    assert found.values == {"guidance_scale": 5.5, "seed": 9}
    assert [line.split(":")[0] for line in found.unknown] == ["steps", "scheduler"]


def test_the_panel_reads_an_upload_once_and_shows_its_words_as_plain_text(app_env, monkeypatch):
    from studio.page import png_info_panel

    reads: list[int] = []
    real = png_info_panel.read_png_info
    monkeypatch.setattr(png_info_panel, "read_png_info", lambda data: reads.append(len(data)) or real(data))
    hostile = ("a photo [click me](https://evil.example) ![x](https://tracker.example/p.png)\n"
               "Steps: 20, Seed: 5, CFG scale: 7, Note: **bold** [link](https://evil.example)")
    app = app_page().run()
    app.file_uploader(key="png-info").set_value(("a.png", png_with_text(parameters=hostile), "image/png")).run()
    app.slider(key="canny_low").set_value(90).run()  # two more reruns of the page
    app.slider(key="canny_high").set_value(190).run()
    assert len(reads) == 1
    markdown = [element.value for kind in ("markdown", "warning", "caption", "error", "info") for element in
                getattr(app, kind)]
    assert not any("](https://" in text for text in markdown), "no link or image of the PNG's becomes Markdown"
    assert "Note: **bold** [link](https://evil.example) (not used here)" in " ".join(block.value for block in app.code)
