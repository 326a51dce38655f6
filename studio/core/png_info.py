"""PNG Info: the settings a PNG carries, read back as request fields, as A1111's "PNG Info → send to" does.

This app's PNGs carry the whole run card (run_card.py), so every setting comes back exactly. Other PNGs carry
A1111's infotext (`parameters`): the prompt, a `Negative prompt:` line and `Key: value` pairs, with LoRAs as
`<lora:name:weight>` tags in the prompt and ControlNet units as quoted lists of their own. What maps onto a
request field is taken (and checked against the field's limits); everything else is listed by name with why,
never dropped in silence.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import PurePath
from typing import Any

from studio.core.catalog import SCHEDULERS
from studio.core.errors import InvalidImageError, InvalidRequestError
from studio.core.png_text import TextTooLong, is_png, png_texts
from studio.core.request import GenerationRequest, _check, request_field
from studio.core.run_card import A1111_RESIZE, GENERIC_LORA, PARAMETERS_KEY, RUN_CARD_KEY

# A1111's own pattern (modules/infotext_utils.py): `Key: value` or `Key: "quoted, with commas"`, comma separated;
# settings_pairs applies it in linear time.
PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([^:>]+))?[^>]*>")  # A1111's; lora_tag_spans gives its matches
KEY_RUN = re.compile(r"[\w \-/]*")  # the characters PARAM's key is made of
WORD = re.compile(r"\w")
SIZE = re.compile(r"^(\d+)x(\d+)$")
SAMPLERS = {scheduler.a1111: name for name, scheduler in SCHEDULERS.items()}
RESIZE_MODES = {label: name for name, label in A1111_RESIZE.items()}
# Top-level A1111 keys -> request fields (converted by the field's kind).
DIRECT = {"Steps": "steps", "CFG scale": "guidance_scale", "Seed": "seed", "Preset": "preset",
          "ADetailer confidence": "detect_conf", "ADetailer denoising strength": "strength",
          "ADetailer inpaint padding": "detail_padding", "Mask blur": "control_feather"}
MODEL_KEYS = ("Model", "Model hash", "VAE", "VAE hash")
# Keys inside a ControlNet unit -> request fields.
CONTROLNET = {"Weight": "controlnet_scale", "Guidance Start": "control_start", "Guidance End": "control_end",
              "Threshold A": "canny_low", "Threshold B": "canny_high"}


@dataclass(frozen=True)
class PngSettings:
    """What a PNG says of the run that made it. `values`: request fields, each within its limits; `loras`: the
    (name, weight) pairs its prompt names; `unknown`: "Key: value" lines of what was read but not used, with why."""

    source: str
    values: dict[str, Any]
    loras: list[tuple[str, float]] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def read_png_info(data: bytes) -> PngSettings:
    """The settings in a PNG's text chunks; InvalidImageError with a message when there are none to read. No pixel
    is decoded and no text beyond png_text.MAX_TEXT_CHARS is read (a hostile file costs what a real one does)."""
    if not is_png(data):
        raise InvalidImageError("This file is not a PNG: A1111 and this app keep their settings in a PNG's text.")
    try:
        texts = png_texts(data, (RUN_CARD_KEY, PARAMETERS_KEY))
    except TextTooLong as exc:
        raise InvalidImageError(f"This PNG's settings cannot be read: {exc}, and A1111's are a few thousand.") from exc
    if RUN_CARD_KEY in texts:
        seed = parse_parameters(texts.get(PARAMETERS_KEY, "")).get("Seed")  # the seed of this very image
        return from_run_card(texts[RUN_CARD_KEY], int(seed) if seed and seed.isdigit() else None)
    if PARAMETERS_KEY in texts:
        return from_parameters(texts[PARAMETERS_KEY])
    raise InvalidImageError("This picture carries no generation settings (no A1111 `parameters` text and no run "
                            "card): it was not saved by this app or by A1111.")


def from_run_card(text: str, seed: int | None = None) -> PngSettings:
    """This app's run card: every request field as it ran (each checked against its limits, since a card is text
    anyone can write), the seed of the image it came with."""
    try:
        card = json.loads(text)
        request, seeds = dict(card["request"]), list(card["seeds"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidImageError("This PNG's run card is damaged: its settings cannot be read.") from exc
    known = {item.name for item in fields(GenerationRequest)}
    values: dict[str, Any] = {}
    unknown: list[str] = []
    for name, value in request.items():
        if name in known:
            take(values, unknown, name, f"{name}: {str(value)[:80]}", value)
    if seed is None and seeds and isinstance(seeds[0], int):
        seed = seeds[0]
    if seed is not None:
        take(values, unknown, "seed", f"seed: {seed}", seed)
    loras = [(values["lora"], values.get("lora_weight", 1.0))] if values.get("lora") else []
    return PngSettings("this app", values, loras, unknown)


def parse_parameters(text: str) -> dict[str, str]:
    """A1111's infotext as "Prompt", "Negative prompt" and its `Key: value` pairs (quoted values unquoted)."""
    *lines, last = text.strip().split("\n")
    pairs = settings_pairs(last)
    if len(pairs) < 3:  # A1111's rule: the settings line has three pairs or more
        lines, last = [*lines, last], ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.strip().startswith("Negative prompt:"):
            in_negative, line = True, line.strip().removeprefix("Negative prompt:")
        (negative if in_negative else prompt).append(line.strip())
    parsed = {"Prompt": "\n".join(prompt).strip(), "Negative prompt": "\n".join(negative).strip()}
    for key, value in pairs if len(pairs) >= 3 else []:
        parsed[key.strip()] = unquote(value.strip())
    return parsed


def settings_pairs(line: str) -> list[tuple[str, str]]:
    """`PARAM.findall(line)` in linear time. findall retries the pattern at every position, and a long run of key
    characters without a colon costs its whole length at each of them (80,000 characters: 34 s with the GIL held).
    A start inside a run fails when the run's first word character failed (the key would end where the run ends),
    so those starts are skipped; tests/test_png_info.py checks the two give the same pairs."""
    pairs, pos = [], 0
    while pos < len(line):
        match = PARAM.match(line, pos)
        if match:
            pairs.append(match.groups())
            pos = match.end()
            continue
        run_end = KEY_RUN.match(line, pos).end()
        first_word = WORD.search(line, pos, run_end)
        pos = first_word.start() if first_word and first_word.start() > pos else max(run_end, pos + 1)
    return pairs


def unquote(value: str) -> str:
    if len(value) > 1 and value[0] == value[-1] == '"':
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value[1:-1]
    return value


def from_parameters(text: str) -> PngSettings:
    """A1111's infotext: what maps onto a request field, and the rest listed."""
    parsed = parse_parameters(text)
    values: dict[str, Any] = {}
    unknown: list[str] = []
    prompt, loras = lora_tags(parsed.pop("Prompt"))
    values["added_prompt"] = ""  # A1111's prompt is the whole prompt
    take(values, unknown, "prompt", "Prompt", prompt)
    take(values, unknown, "negative_prompt", "Negative prompt", parsed.pop("Negative prompt"))
    sampler = parsed.pop("Sampler", None)
    if sampler is not None:
        schedule = parsed.pop("Schedule type", "")  # A1111 1.9+ names the Karras schedule apart from the sampler
        name = f"{sampler} {schedule}" if schedule and schedule != "Automatic" else sampler
        take(values, unknown, "scheduler", f"Sampler: {name}", SAMPLERS.get(name), "not offered here")
    size = SIZE.match(parsed.get("Size", ""))
    if size and int(size[1]) % 8 == 0 and int(size[2]) % 8 == 0:
        del parsed["Size"]
        take(values, unknown, "width", f"Size: {size[0]}", int(size[1]))
        take(values, unknown, "height", f"Size: {size[0]}", int(size[2]))
    if any(key.startswith("ADetailer") for key in parsed):
        values["detail_output"] = True  # ADetailer details what was generated: our detail pass of the output
    if parsed.get("RP Active") == "True" and parsed.get("RP Calc Mode", "Attention") == "Attention":
        del parsed["RP Active"]
        parsed.pop("RP Calc Mode", None)
        take(values, unknown, "object_prompt_mode", "RP Active", "one_pass")
    if "Soft inpainting enabled" in parsed:
        take(values, unknown, "soft_mask", "Soft inpainting enabled", parsed.pop("Soft inpainting enabled") == "True")
    for key in [key for key in parsed if key in DIRECT]:
        take(values, unknown, DIRECT[key], f"{key}: {parsed[key]}", number(parsed.pop(key)))
    canny = False
    for key in [key for key in parsed if re.fullmatch(r"ControlNet[ -]?\d*", key)]:
        canny = controlnet_unit(key, parsed.pop(key), values, unknown, taken=canny) or canny
    values.setdefault("preset", "custom")  # A1111's own scheduler, steps and CFG, without a preset's LoRA
    unknown += [f"{key}: {value} ({'this server runs its own model' if key in MODEL_KEYS else 'not used here'})"
                for key, value in parsed.items()]
    return PngSettings("A1111", values, loras, unknown)


def lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """The prompt without its `<lora:name:weight>` tags, and the tags' names and weights."""
    tags = lora_tag_spans(prompt)
    loras = [(name, float(weight) if weight and is_number(weight) else 1.0) for _, _, name, weight in tags]
    kept, pos = [], 0
    for start, end, _, _ in tags:
        kept.append(prompt[pos:start])
        pos = end
    text = re.sub(r",(\s*,)+", ",", "".join([*kept, prompt[pos:]]))
    return re.sub(r"\s{2,}", " ", text).strip(" ,"), loras


def lora_tag_spans(prompt: str) -> list[tuple[int, int, str, str]]:
    """`LORA_TAG`'s matches (start, end, name, weight) in linear time: the pattern backtracks through the whole rest
    of the text at every `<lora:` that has no `>` after it. A tag is `<lora:` up to the next `>`; its name runs to
    the first colon, its weight to the next; a tag with an empty name is no tag (as the pattern says)."""
    spans, pos = [], 0
    while (start := prompt.find("<lora:", pos)) >= 0:
        end = prompt.find(">", start)
        if end < 0:
            break
        name, _, rest = prompt[start + 6:end].partition(":")
        if not name:
            pos = start + 1
            continue
        spans.append((start, end + 1, name, rest.partition(":")[0]))
        pos = end + 1
    return spans


def controlnet_unit(key: str, text: str, values: dict[str, Any], unknown: list[str], taken: bool) -> bool:
    """One ControlNet unit: the first canny unit fills the ControlNet fields (True); any other is listed, since
    one Canny ControlNet runs here."""
    unit = {name.strip(): value.strip() for name, value in settings_pairs(text)}
    if taken or "canny" not in unit.get("Module", "").lower():
        unknown.append(f"{key}: {text} (one Canny ControlNet runs here)")
        return False
    for name, value in unit.items():
        if name in CONTROLNET:
            take(values, unknown, CONTROLNET[name], f"{key} {name}: {value}", number(value))
        elif name == "Resize Mode" and value in RESIZE_MODES:
            values["resize_mode"] = RESIZE_MODES[value]
        elif name == "Control Mode":
            values["guess_mode"] = value == "ControlNet is more important"
        elif name not in ("Module", "Model", "Processor Res", "Pixel Perfect", "Low Vram", "Save Detected Map"):
            unknown.append(f"{key} {name}: {value} (not used here)")
    return True


def take(values: dict[str, Any], unknown: list[str], name: str, shown: str, value: Any,
         why: str = "not a value this field takes") -> None:
    """Put `value` into the request field `name` when the field takes it; else list it with why."""
    if value is None:
        unknown.append(f"{shown} ({why})")
        return
    if request_field(name).metadata["kind"] == "number" and isinstance(value, int):
        value = float(value)  # a slider of floats takes no int
    try:
        _check(request_field(name), value)
    except InvalidRequestError as exc:
        unknown.append(f"{shown} ({exc})")
        return
    values[name] = value


def is_number(text: str) -> bool:
    return re.fullmatch(r"-?\d+(\.\d+)?", text.strip()) is not None


def number(text: str) -> int | float | str | None:
    """A1111's numbers as Python's: whole ones as int, others as float; text stays text (Preset)."""
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if is_number(text):
        return float(text)
    return text or None


def offered_lora(name: str, offered: list[str]) -> str | None:
    """The offered LoRA a PNG's LoRA name means (A1111 names it by its file's stem; this app's cards by the file's
    name, or its folder for diffusers' generic file name), or None when the server does not offer it."""
    wanted = PurePath(name)
    for choice in offered:
        path = PurePath(choice)
        names = {choice, path.name, path.stem}
        if path.stem == GENERIC_LORA:
            names |= {path.parent.name, f"{path.parent.name}/{path.name}"}
        if {name, wanted.stem} & names:
            return choice
    return None


def style_lora(found: PngSettings, offered: list[str], any_allowed: bool) -> tuple[str | None, float | None, list[str]]:
    """The one style LoRA the page takes from a PNG (the first this server offers; any with ALLOW_ANY_LORA), its
    weight, and a line for each LoRA it does not take."""
    chosen, weight, notes = None, None, []
    low, high = request_field("lora_weight").metadata["limits"]
    for name, strength in found.loras:
        match = name if any_allowed else offered_lora(name, offered)
        if match is None:
            notes.append(f"LoRA {name}: {strength} (not offered on this server)")
        elif chosen is not None:
            notes.append(f"LoRA {name}: {strength} (one style LoRA runs at a time)")
        elif not low <= strength <= high:
            notes.append(f"LoRA {name}: {strength} (the weight must lie between {low} and {high})")
        else:
            chosen, weight = match, float(strength)
    return chosen, weight, notes
