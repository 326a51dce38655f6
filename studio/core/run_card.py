"""The run card: everything needed to repeat a run, carried inside every PNG the app hands out.

Each PNG carries it twice: as JSON (`run_card`, read back by `read_run_card`) and as A1111's infotext
(`parameters`): the prompt, a `Negative prompt:` line, then `key: value` pairs, which A1111's PNG Info, Civitai
and most image browsers read.
"""

from __future__ import annotations

import io
import json
import re
from importlib import metadata
from pathlib import Path, PurePath

from PIL import Image, PngImagePlugin

from studio.core.catalog import SCHEDULERS
from studio.core.image_io import encoded_image
from studio.core.repaint_plan import DETAIL_FEATHER

RUN_CARD_KEY = "run_card"
PARAMETERS_KEY = "parameters"
# Our resize names as A1111's ControlNet extension writes them.
A1111_RESIZE = {"resize": "Just Resize", "crop": "Crop and Resize", "fill": "Resize and Fill"}
GENERIC_LORA = "pytorch_lora_weights"  # the file name diffusers gives every LoRA it saves
VERSIONED_PACKAGES = ("torch", "diffusers", "transformers", "ultralytics", "xformers", "flash-attn")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the pixels; missing ones are left out."""
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def public_source(source: str | None) -> str | None:
    """What a run card may say of a model or file: a Hub id as it is, a local path by its name alone (a card
    travels inside every PNG, and a server's folders are nobody's business)."""
    if source is None:
        return None
    path = Path(source).expanduser()
    if not (path.is_absolute() or source.startswith((".", "~")) or path.exists()):
        return source
    generic = path.stem == GENERIC_LORA and path.parent.name  # diffusers' file name says nothing: keep its folder
    return f"{path.parent.name}/{path.name}" if generic else path.name


def model_name(source: str) -> str:
    """A Hub id's or a path's last part: no server path leaves the machine."""
    return PurePath(source).name or source


def a1111_parameters(card: dict, index: int = 0) -> str:
    """The run of image `index` in A1111's infotext format."""
    request = card["request"]
    prompt = one_line(", ".join(p for p in (request["prompt"].strip(), request["added_prompt"].strip()) if p))
    for lora in card.get("loras", []):  # the preset's distillation LoRA and the style LoRA, as A1111 writes them
        name = PurePath(lora["id"]).stem
        if name == GENERIC_LORA:  # diffusers' file name says nothing: name it by its repository or folder
            name = PurePath(lora["id"]).parent.name or name
        prompt += f" <lora:{name}:{lora['weight']}>"
    controlnet = ", ".join([
        "Module: canny" if request["control_source"] == "canny" else "Module: none",
        f"Model: {model_name(card['models']['controlnet'])}", f"Weight: {request['controlnet_scale']}",
        f"Resize Mode: {A1111_RESIZE[request['resize_mode']]}", f"Processor Res: {min(card['size'])}",
        f"Threshold A: {request['canny_low']}", f"Threshold B: {request['canny_high']}",
        f"Guidance Start: {request['control_start']}", f"Guidance End: {request['control_end']}",
        f"Control Mode: {'ControlNet is more important' if request['guess_mode'] else 'Balanced'}"])
    settings = ", ".join([
        f"Steps: {request['steps']}", f"Sampler: {SCHEDULERS[request['scheduler']].a1111}",
        f"CFG scale: {request['guidance_scale']}", f"Seed: {card['seeds'][index]}",
        f"Size: {card['size'][0]}x{card['size'][1]}", f"Model: {model_name(card['models']['sd15'])}",
        f"ControlNet 0: {json.dumps(controlnet)}", *soft_inpainting_fields(card), *regional_prompter_fields(card),
        *adetailer_fields(card, index),
        f"Preset: {request.get('preset', 'quality')}", "Version: yolo-controlnet-studio"])
    lines = [prompt.strip()]
    if request["negative_prompt"].strip() and request["guidance_scale"] > 1:  # at CFG 1 it was not used
        lines.append(f"Negative prompt: {one_line(request['negative_prompt'])}")
    return "\n".join([*lines, settings])


def one_line(text: str) -> str:
    """A prompt as one line: A1111's readers take the text's last line as its settings, so a prompt with line
    breaks could forge them (`…\\nSteps: 150, Seed: 42`); each break (every character `str.splitlines` breaks
    at, since readers split either way) becomes a space."""
    return re.sub(r"\s*[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+\s*", " ", text).strip()


def soft_inpainting_fields(card: dict) -> list[str]:
    """A soft repaint as A1111 names it (its img2img mask blur and its soft inpainting switch); none otherwise."""
    request = card["request"]
    if not (request.get("soft_mask") and card.get("objects")):
        return []
    return [f"Mask blur: {request['control_feather']}", "Soft inpainting enabled: True"]


def regional_prompter_fields(card: dict) -> list[str]:
    """Regional prompts in one pass as A1111's Regional Prompter names its mode (regions from masks, attention per
    region); the prompts per object are in the run card. None otherwise."""
    if not any(entry.get("one_pass") for entry in card.get("objects", [])):
        return []
    return ["RP Active: True", "RP Divide mode: Mask", "RP Calc Mode: Attention"]


def adetailer_fields(card: dict, index: int = 0) -> list[str]:
    """A detail pass as ADetailer writes its fields (one prompt per object, joined by its "[SEP]"), so PNG Info
    readers show it; none when the run had no detail pass."""
    request = card["request"]
    objects = [entry for entry in card.get("objects", []) if entry.get("image", 0) == index]
    if not objects or not (request.get("regenerate") == "detail" or request.get("detail_output")):
        return []
    prompts = " [SEP] ".join(one_line(entry["prompt"]) for entry in objects)
    negatives = " [SEP] ".join(one_line(entry["negative_prompt"]) for entry in objects)
    return [f"ADetailer model: {model_name(card['models'].get('yolo', 'yolo'))}",
            f"ADetailer prompt: {json.dumps(prompts)}", f"ADetailer negative prompt: {json.dumps(negatives)}",
            f"ADetailer confidence: {request['detect_conf']}",
            f"ADetailer mask blur: {max(request['control_feather'], DETAIL_FEATHER)}",
            f"ADetailer denoising strength: {request['strength']}",
            f"ADetailer inpaint padding: {request['detail_padding']}",
            f"ADetailer inpaint width: {objects[0]['working_size'][0]}",
            f"ADetailer inpaint height: {objects[0]['working_size'][1]}"]


def png_with_run_card(image: Image.Image, card: dict, index: int = 0) -> bytes:
    """PNG bytes of `image` with the run card as JSON and, for image `index` of the run, A1111's infotext."""
    info = PngImagePlugin.PngInfo()
    info.add_text(RUN_CARD_KEY, json.dumps(card, sort_keys=True))
    info.add_text(PARAMETERS_KEY, a1111_parameters(card, index))
    return encoded_image(image, "PNG", pnginfo=info)


def read_run_card(png: bytes) -> dict:
    """The run card stored by `png_with_run_card`; KeyError when the PNG carries none."""
    with Image.open(io.BytesIO(png)) as image:
        return json.loads(image.text[RUN_CARD_KEY])
