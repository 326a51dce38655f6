"""The page's form, written once (as ADetailer's args table): every widget, the panel it sits in and its place,
and how its value becomes a request field and comes back from one (PNG Info, a saved run, an example, a reload).

A request field's widget is keyed by the field's name and takes the request's default, label, limits, choices and
help (request.py): adding a field is one edit there and one row in FORM. `CONVERTED` holds the widgets that show
request fields their own way (a random-seed toggle, one start/end slider, class names for class ids, a checkbox and
a prompt per detected object), each with its conversion both ways.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from studio.core.detections import names_to_find
from studio.core.request import GenerationRequest, guides

State = Mapping[str, Any]
PICK, OBJECT_PROMPT = "pick-", "object-prompt-"  # the objects list's widgets: a checkbox and a prompt per object


# -- when a widget acts (a widget that does not act is drawn disabled) -------------------------------------

def guided(state: State) -> bool:
    return guides(state["guidance_scale"])


def repainting(state: State) -> bool:
    return state["regenerate"] != "all" or state["detail_output"]


def whole_picture(state: State) -> bool:
    return state["regenerate"] == "all"


def region_guided(state: State) -> bool:
    """The control image or the repaint follows the chosen objects, so their classes and padding act."""
    return state["control_mode"] != "full" or state["regenerate"] != "all"


def own_size(state: State) -> bool:
    return state["set_size"]


def by_resolution(state: State) -> bool:
    return not state["set_size"]


def canny(state: State) -> bool:
    return not state["own_control"]


def edge_map(state: State) -> bool:
    return state["own_control"]


@dataclass(frozen=True)
class Widget:
    """One widget of a panel. `beside`: in the same row as the widget before it. `draw`: the page's own widget
    (widgets.py); None: drawn from the request field's metadata. `on_change` names a rule of rules.py."""

    key: str
    panel: str
    beside: bool = False
    enabled: Callable[[State], bool] | None = None
    on_change: str | None = None
    draw: str | None = None


FORM: tuple[Widget, ...] = (
    Widget("prompt", "prompt", draw="text_area"),
    Widget("added_prompt", "prompt"),
    Widget("negative_prompt", "prompt", enabled=guided),
    Widget("preset", "preset", on_change="use_preset", draw="preset"),
    Widget("fast_decode", "preset"),
    Widget("steps", "generation", on_change="leave_preset"),
    Widget("guidance_scale", "generation", beside=True, on_change="leave_preset"),
    Widget("num_images", "generation"),
    Widget("scheduler", "generation", beside=True, on_change="leave_preset"),
    Widget("randomize_seed", "generation", draw="seed_toggle"),
    Widget("seed", "generation", draw="seed_row"),
    Widget("resolution", "generation", enabled=by_resolution),
    Widget("set_size", "generation", draw="size_toggle"),
    Widget("width", "generation", enabled=own_size),
    Widget("height", "generation", beside=True, enabled=own_size),
    Widget("resize_mode", "generation", beside=True, enabled=own_size),
    Widget("controlnet_scale", "generation"),
    Widget("control_range", "generation", beside=True, draw="control_range"),
    Widget("guess_mode", "generation", enabled=guided),
    Widget("lora", "lora", draw="lora"),
    Widget("lora_weight", "lora"),
    Widget("detect_conf", "detection"),
    Widget("detect_iou", "detection", beside=True),
    Widget("detect_classes", "detection", draw="detect_classes"),
    Widget("find", "detection", draw="find"),
    Widget("control_mode", "control"),
    Widget("regenerate", "control", beside=True, on_change="use_mode_defaults"),
    Widget("strength", "repaint", enabled=repainting),
    Widget("color_match", "repaint", enabled=repainting),
    Widget("soft_mask", "repaint", enabled=repainting),
    Widget("detail_output", "repaint", enabled=whole_picture, on_change="use_mode_defaults"),
    Widget("detail_resolution", "repaint"),
    Widget("detail_padding", "repaint", beside=True),
    Widget("max_objects", "repaint", draw="number"),
    Widget("min_object_area", "repaint", beside=True),
    Widget("control_classes", "control settings", enabled=region_guided, draw="control_classes"),
    Widget("control_padding", "control settings", enabled=region_guided),
    Widget("control_feather", "control settings", beside=True, enabled=region_guided),
    Widget("background_weight", "control settings", beside=True, enabled=region_guided),
    Widget("canny_low", "control settings", enabled=canny),
    Widget("canny_high", "control settings", beside=True, enabled=canny),
    Widget("own_control", "control settings", draw="own_control"),
    Widget("invert_edge_map", "control settings", enabled=edge_map),
    Widget("object_prompt_mode", "objects"),
)
# The page's own widgets that are no request field, and the prompt the page opens with.
PAGE_ONLY: dict[str, Any] = {"prompt": "a cozy cottage in a watercolor painting", "sample": "Shapes scene",
                             "use_camera": False}
NOT_ON_PAGE = ("object_negative_prompts",)  # only the HTTP API sets it


@dataclass(frozen=True)
class Context:
    """What the widgets' values refer to: the detector's class names by id, and the photo on the page (the key
    that names it in the caches)."""

    detector: Mapping[int, str]
    photo: str | None = None

    def in_use(self, find: str | None) -> Mapping[int, str]:
        """The classes detections come in: the detector's, or the things "Find by name" names."""
        named = names_to_find(find or "")
        return dict(enumerate(named)) if named else self.detector

    def objects(self, find: str | None) -> str:
        return objects_tag(self.photo, find)


def objects_tag(photo: str | None, find: str | None) -> str:
    """What object ids name: the detections of one photo, found by one list of names. The objects list's widget
    keys carry it, so another photo or other names get widgets of their own, unticked in the browser too (a
    deleted key leaves the browser's checkbox ticked, and its next message ticks it again)."""
    return hashlib.blake2b(f"{photo}|{find or ''}".encode(), digest_size=6).hexdigest()


def object_key(prefix: str, tag: str, object_id: int) -> str:
    return f"{prefix}{tag}-{object_id}"


@dataclass(frozen=True)
class Converted:
    """Widgets that show request `fields` their own way: their keys with defaults, and the conversion both ways."""

    fields: tuple[str, ...]
    defaults: dict[str, Any] = field(default_factory=dict)
    to_request: Callable[[State, Context], dict[str, Any]] = lambda state, context: {}
    to_page: Callable[[State, State, Context], dict[str, Any]] = lambda values, state, context: {}


def ids_of(names: list[str], classes: Mapping[int, str]) -> tuple[int, ...] | None:
    ids = {name: class_id for class_id, name in classes.items()}
    return tuple(ids[name] for name in names if name in ids) or None


def names_of(ids: Any, classes: Mapping[int, str]) -> list[str]:
    return [classes[i] for i in ids or () if i in classes]


def object_widgets(state: State, prefix: str, tag: str | None = None) -> list[tuple[int, str]]:
    """(object id, state key) of the objects list's widgets of one kind: those of `tag`, or of every tag."""
    found = []
    for key in list(state):
        if isinstance(key, str) and key.startswith(prefix):
            key_tag, _, object_id = key.removeprefix(prefix).rpartition("-")
            if object_id.isdigit() and key_tag and tag in (None, key_tag):
                found.append((int(object_id), key))
    return found


def picks_of(values: State, state: State, context: Context) -> dict[str, Any]:
    tag = context.objects(values.get("find", state.get("find")))
    picked = set(values.get("objects") or ())
    ticks = {key: object_id in picked for object_id, key in object_widgets(state, PICK, tag)}
    ticks.update({object_key(PICK, tag, object_id): True for object_id in picked})
    prompts = {object_key(OBJECT_PROMPT, tag, object_id): text
               for object_id, text in (values.get("object_prompts") or {}).items()}
    return {**ticks, **prompts}


def objects_of(state: State, context: Context) -> dict[str, Any]:
    tag = context.objects(state["find"])
    return {"objects": tuple(sorted(i for i, key in object_widgets(state, PICK, tag) if state[key])) or None,
            "object_prompts": {i: state[key] for i, key in object_widgets(state, OBJECT_PROMPT, tag)}}


CONVERTED: tuple[Converted, ...] = (
    Converted(("seed",), {"randomize_seed": True, "seed": 1},
              lambda s, c: {"seed": None if s["randomize_seed"] else int(s["seed"])},
              lambda v, s, c: {} if v["seed"] is None else {"seed": v["seed"], "randomize_seed": False}),
    Converted(("width", "height"), {"set_size": False, "width": 512, "height": 512},
              lambda s, c: {"width": s["width"] if s["set_size"] else None,
                            "height": s["height"] if s["set_size"] else None},
              lambda v, s, c: {"set_size": v.get("width") is not None,
                               **({"width": v["width"], "height": v["height"]} if v.get("width") else {})}),
    Converted(("control_start", "control_end"),
              {"control_range": (GenerationRequest.control_start, GenerationRequest.control_end)},
              lambda s, c: {"control_start": s["control_range"][0], "control_end": s["control_range"][1]},
              lambda v, s, c: {"control_range": (v.get("control_start", s["control_range"][0]),
                                                 v.get("control_end", s["control_range"][1]))}),
    Converted(("lora",), {"lora": ""}, lambda s, c: {"lora": s["lora"].strip() or None},
              lambda v, s, c: {"lora": v["lora"] or ""}),
    Converted(("control_source",), {"own_control": False},
              lambda s, c: {"control_source": "edge_map" if s["own_control"] else "canny"},
              lambda v, s, c: {"own_control": v["control_source"] == "edge_map"}),
    Converted(("detect_classes",), {"detect_classes": []},
              lambda s, c: {"detect_classes": ids_of(s["detect_classes"], c.detector)},
              lambda v, s, c: {"detect_classes": names_of(v["detect_classes"], c.detector)}),
    Converted(("control_classes",), {"control_classes": []},  # with "Find by name", the classes are its names
              lambda s, c: {"control_classes": ids_of(s["control_classes"], c.in_use(s["find"]))},
              lambda v, s, c: {"control_classes": names_of(v["control_classes"], c.in_use(v.get("find")))}),
    Converted(("objects", "object_prompts"), {}, objects_of, picks_of),  # ids name the photo's objects
    Converted(NOT_ON_PAGE),
)
CONVERTED_FIELDS = {name for item in CONVERTED for name in item.fields}


def defaults(preset: str) -> dict[str, Any]:
    """Every widget's value on a new page: the request's defaults (with `preset`'s fills), the converted widgets'
    own, and the page-only ones."""
    request = GenerationRequest(preset=preset)
    plain = {item.name: getattr(request, item.name) for item in fields(request) if item.name not in CONVERTED_FIELDS}
    return {**plain, **{k: v for item in CONVERTED for k, v in item.defaults.items()}, **PAGE_ONLY}


def request_of(state: State, context: Context) -> GenerationRequest:
    """The request the widgets describe; raises InvalidRequestError with a message for the person."""
    values = {item.name: state[item.name] for item in fields(GenerationRequest)
              if item.name not in CONVERTED_FIELDS and item.name in state}
    for item in CONVERTED:
        values.update(item.to_request(state, context))
    return GenerationRequest(**values)


def widget_values(values: State, state: State, context: Context) -> dict[str, Any]:
    """The widget values that show request field `values` (fields left out leave their widgets as they are)."""
    shown = {key: value for key, value in values.items() if key not in CONVERTED_FIELDS and key in state}
    for item in CONVERTED:
        if any(name in values for name in item.fields):
            shown.update(item.to_page(values, state, context))
    return shown


def saved(state: State) -> dict[str, Any]:
    """What a reload restores: every widget's value but the photo's, and the objects picked on the photo shown."""
    keys = [key for key in defaults(GenerationRequest.preset) if key != "use_camera"]
    picks = [key for prefix in (PICK, OBJECT_PROMPT) for _, key in object_widgets(state, prefix)]
    return {key: list(state[key]) if isinstance(state[key], tuple) else state[key] for key in keys + picks
            if key in state}
