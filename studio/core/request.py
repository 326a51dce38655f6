"""What one run asks for and what it gives back: plain data, validated on construction, no model code.

Every field of `GenerationRequest` carries its own metadata (`knob`): the kind of value, the range, the
choices, the page's label and slider step. Validation here, the page's widgets and `request_from_state` all
read it, so the page, the Python API and the HTTP API cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from numbers import Integral, Real
from typing import Any

from studio.core.catalog import SCHEDULERS
from studio.core.control_image import CONTROL_MODES, REGENERATE_MODES, RESIZE_MODES
from studio.core.detections import MAX_NAMES, Detection, names_to_find
from studio.core.errors import InvalidRequestError
from studio.core.presets import PRESETS

NEGATIVE_PROMPT = ("longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, cropped, "
                   "worst quality, low quality")
SEED_MAX = 2**32 - 1
MAX_PROMPT_CHARS = 1000  # CLIP reads 75 tokens (a few hundred characters); more only costs time and memory
CONTROL_SOURCES = {"canny": "Canny of the photo", "edge_map": "The upload is an edge map"}
KINDS = {"whole": "a whole number", "number": "a finite number", "text": "text", "switch": "true or false",
         "classes": "a list of class ids (whole numbers)", "ids": "a list of object ids (whole numbers)",
         "prompts": "a mapping from object ids (whole numbers) to prompts (text)"}
OBJECT_PROMPT_MODES = {"pass_each": "A pass each", "one_pass": "All in one pass (regional prompts)"}
DETAIL_STRENGTH = 0.4  # ADetailer's default denoising strength: the object restyled, its colours and shape kept


def knob(default: Any, kind: str, label: str = "", *, limits: tuple[float, float] | None = None,
         step: float | None = None, choices: Mapping[str, str] | None = None, optional: bool = False,
         help: str | None = None) -> Any:
    """A request field with what validation and the page need to know about it."""
    return field(default=default, metadata={"kind": kind, "label": label, "limits": limits, "step": step,
                                            "choices": choices, "optional": optional, "help": help})


def _labels(items: Mapping[str, Any]) -> dict[str, str]:
    return {name: getattr(item, "label", item) for name, item in items.items()}


class ObjectPrompts(dict):
    """Prompts by object id: a dict that cannot change after it is made, so a request stays hashable."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def _frozen(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a request's object prompts cannot change; make a new request (dataclasses.replace)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _frozen  # type: ignore[assignment]

    def __reduce__(self) -> tuple[type, tuple[dict]]:  # copies and pickles are built whole, not item by item
        return ObjectPrompts, (dict(self),)


@dataclass(frozen=True)
class GenerationRequest:
    """Every knob of one run, with the defaults of the ControlNet Canny demo.

    `preset` ("quality", "fast", "turbo": presets.py) fills `scheduler`, `steps` and `guidance_scale` where
    they are left at None, and brings its distillation LoRA; a value given explicitly wins."""

    prompt: str = knob("", "text", "Prompt")
    added_prompt: str = knob("best quality, extremely detailed", "text", "Added prompt")
    negative_prompt: str = knob(NEGATIVE_PROMPT, "text", "Negative prompt")
    preset: str = knob("quality", "text", "Speed preset", choices=_labels(PRESETS))
    num_images: int = knob(1, "whole", "Images per run", limits=(1, 8), step=1)
    steps: int = knob(None, "whole", "Steps", limits=(1, 150), step=1)  # None: the preset's
    guidance_scale: float = knob(None, "number", "Guidance scale (CFG)", limits=(0.0, 30.0), step=0.5)
    seed: int | None = knob(None, "whole", "Seed", limits=(0, SEED_MAX), optional=True)
    resolution: int = knob(512, "whole", "Resolution (short side)", limits=(64, 2048), step=64)
    width: int | None = knob(None, "whole", "Width", limits=(64, 2048), step=64, optional=True)
    height: int | None = knob(None, "whole", "Height", limits=(64, 2048), step=64, optional=True)
    resize_mode: str = knob("resize", "text", "Resize mode", choices=RESIZE_MODES)
    controlnet_scale: float = knob(1.0, "number", "ControlNet strength", limits=(0.0, 2.0), step=0.05)
    control_start: float = knob(0.0, "number", "Control start", limits=(0.0, 1.0), step=0.05)
    control_end: float = knob(1.0, "number", "Control end", limits=(0.0, 1.0), step=0.05)
    guess_mode: bool = knob(False, "switch", "Guess mode", help="Let ControlNet guess the content from the edges "
                            "alone; works best with a CFG of 3 to 5.")
    scheduler: str = knob(None, "text", "Scheduler", choices=_labels(SCHEDULERS))
    fast_decode: bool = knob(False, "switch", "Decode with TAESD (fastest, slightly softer)")
    lora: str | None = knob(None, "text", "Style LoRA", optional=True)
    lora_weight: float = knob(0.8, "number", "LoRA weight", limits=(0.0, 2.0), step=0.05)
    canny_low: int = knob(100, "whole", "Canny low", limits=(1, 255), step=1)
    canny_high: int = knob(200, "whole", "Canny high", limits=(1, 255), step=1)
    control_mode: str = knob("full", "text", "What keeps its structure", choices=CONTROL_MODES)
    control_classes: tuple[int, ...] | None = knob(None, "classes", "Objects (empty: every detected one)",
                                                   optional=True)
    control_padding: float = knob(0.0, "number", "Padding", limits=(0.0, 1.0), step=0.05)
    control_feather: int = knob(0, "whole", "Feather (px)", limits=(0, 64), step=1)
    background_weight: float = knob(0.0, "number", "Other region's edges", limits=(0.0, 1.0), step=0.05)
    control_source: str = knob("canny", "text", "Control source", choices=CONTROL_SOURCES)
    invert_edge_map: bool = knob(False, "switch", "Invert it (black lines on white)")
    regenerate: str = knob("all", "text", "What to repaint", choices=REGENERATE_MODES,
                           help="Repaint only the chosen objects (their segmentation masks, or boxes), or everything "
                                "but them; the rest of the photo is kept pixel for pixel.")
    detect_conf: float = knob(0.25, "number", "Confidence", limits=(0.0, 1.0), step=0.05)
    detect_iou: float = knob(0.45, "number", "IoU (overlap)", limits=(0.0, 1.0), step=0.05)
    detect_classes: tuple[int, ...] | None = knob(None, "classes", "Only these classes (empty: all)", optional=True)
    find: str = knob("", "text", "Find by name",
                     help="Things to find, comma-separated (\"the wooden door, logo\"): the open-vocabulary "
                          "segmenter (YOLOE) looks for them instead of the detector's classes, and each becomes an "
                          "object to pick, prompt and repaint. Empty: the detector's classes.")
    objects: tuple[int, ...] | None = knob(None, "ids", "Objects, by id (empty: every object of the chosen "
                                           "classes)", optional=True)
    object_prompts: ObjectPrompts | None = knob(None, "prompts", "Prompt per object", optional=True,
                                                help="Objects with a prompt of their own are repainted with it, "
                                                     "the others with the main prompt.")
    object_negative_prompts: ObjectPrompts | None = knob(None, "prompts", "Negative prompt per object",
                                                         optional=True)
    object_prompt_mode: str = knob("pass_each", "text", "Objects with a prompt of their own",
                                   choices=OBJECT_PROMPT_MODES,
                                   help="In 'Only the chosen objects' mode: a repaint pass per such object, or all "
                                        "objects in one denoise, each region attending to its own prompt "
                                        "(regional prompts: one pass, as fast as one object).")
    strength: float | None = knob(None, "number", "Denoising strength", limits=(0.0, 1.0), step=0.05, optional=True,
                                  help="How far a repaint departs from the photo: 1 starts from noise, 0.4 restyles "
                                       "and keeps colours and shapes, 0 keeps the photo. Default: 0.4 for the "
                                       "detail pass, 1 otherwise.")
    detail_padding: int = knob(32, "whole", "Crop padding (px)", limits=(0, 256), step=4,
                               help="Context around each object's box in its detail crop (ADetailer's default: 32).")
    detail_resolution: int = knob(512, "whole", "Detail resolution (short side)", limits=(64, 1024), step=64,
                                  help="Each object's crop is sampled at this short side, then scaled back.")
    detail_output: bool = knob(False, "switch", "Then detail the objects found in the output (ADetailer)",
                               help="After generating everything, detect objects on each output and give each a "
                                    "detail pass.")
    color_match: bool | None = knob(None, "switch", "Keep the photo's colours (colour correction)", optional=True,
                                    help="Match each repainted region's colour statistics to the photo's before "
                                         "blending, as A1111's colour correction. Default: on for detail passes.")
    soft_mask: bool = knob(False, "switch", "Soft edges (differential diffusion)",
                           help="The feathered mask says how much each pixel may change: the inside is repainted "
                                "from the first step, the feathered border from later steps, so it changes less "
                                "and leaves no seam. Widen it with Feather (px); at 0 the mask is hard.")
    max_objects: int | None = knob(None, "whole", "At most this many objects (the most confident)", limits=(1, 100),
                                   step=1, optional=True)
    min_object_area: float = knob(0.0, "number", "Smallest object (share of the picture)", limits=(0.0, 1.0),
                                  step=0.005)

    def __post_init__(self) -> None:
        _check(request_field("preset"), self.preset)
        preset = PRESETS[self.preset]
        for name in ("scheduler", "steps", "guidance_scale"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, getattr(preset, name))
        detailing = self.regenerate == "detail" or self.detail_output is True
        if self.strength is None:
            object.__setattr__(self, "strength", DETAIL_STRENGTH if detailing else 1.0)
        if self.color_match is None:
            object.__setattr__(self, "color_match", detailing)
        for name in ("object_prompts", "object_negative_prompts"):
            object.__setattr__(self, name, _object_prompts(name, getattr(self, name)))
        for item in fields(self):
            _check(item, getattr(self, item.name))
        if self.detail_output and self.regenerate != "all":
            raise InvalidRequestError("detail_output details the generated picture, so it goes with regenerate='all'; "
                                      "regenerate='detail' details the photo's own objects")
        if len(self.find_names) > MAX_NAMES:
            raise InvalidRequestError(f"find names {len(self.find_names)} things; at most {MAX_NAMES} can be found "
                                      f"in one run")
        most = SCHEDULERS[self.scheduler].most_steps
        if most is not None and self.steps > most:
            raise InvalidRequestError(f"the {SCHEDULERS[self.scheduler].label} scheduler samples at most {most} steps, "
                                      f"got {self.steps}: fewer steps, or another scheduler")
        if self.control_start > self.control_end:
            raise InvalidRequestError("control_start must not be after control_end")
        if (self.width is None) != (self.height is None):
            raise InvalidRequestError("give both width and height, or neither (then resolution sets the size)")
        for name in ("width", "height"):
            if getattr(self, name) is not None and getattr(self, name) % 8:
                raise InvalidRequestError(f"{name} must be a multiple of 8, got {getattr(self, name)}")

    @property
    def guided(self) -> bool:
        """Classifier-free guidance is on: only then do the negative prompt and guess mode act (diffusers skips the
        unconditional pass at a CFG of 1 or less)."""
        return guides(self.guidance_scale)

    @property
    def full_prompt(self) -> str:
        return ", ".join(p for p in (self.prompt.strip(), self.added_prompt.strip()) if p)

    @property
    def find_names(self) -> tuple[str, ...]:
        """What the open-vocabulary segmenter looks for; () leaves detection to the detector's classes."""
        return names_to_find(self.find)

    def prompts_for(self, object_id: int) -> tuple[str | None, str | None]:
        """The object's own prompt and negative prompt (None: the request's)."""
        return ((self.object_prompts or {}).get(object_id) or None,
                (self.object_negative_prompts or {}).get(object_id) or None)


def _object_prompts(name: str, value: Any) -> ObjectPrompts | None:
    """Prompts by object id as an ObjectPrompts (ids given as digit strings, as JSON writes them, are taken);
    empty prompts are dropped, and so is an empty mapping."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidRequestError(f"{name} must be {KINDS['prompts']}, got {type(value).__name__}")
    cleaned = {}
    for key, text in value.items():
        if isinstance(key, str) and key.isascii() and key.isdigit() and len(key) < 6:
            key = int(key)
        if not _whole(key) or key < 0 or not isinstance(text, str):
            raise InvalidRequestError(f"{name} must be {KINDS['prompts']}, got {repr(key)[:20]}: {repr(text)[:40]}")
        if len(text) > MAX_PROMPT_CHARS:
            raise InvalidRequestError(f"The {name.replace('_', ' ')} of object {key} is {len(text):,} characters "
                                      f"long; at most {MAX_PROMPT_CHARS:,} are allowed.")
        if text.strip():
            cleaned[key] = text.strip()
    return ObjectPrompts(cleaned) if cleaned else None


def request_from(values: Any) -> GenerationRequest:
    """A request from plain data (JSON: lists for tuples, ids as strings): unknown fields are refused by name,
    everything else is checked by GenerationRequest itself."""
    if not isinstance(values, Mapping):
        raise InvalidRequestError(f"The request must be an object of GenerationRequest's fields, not "
                                  f"{type(values).__name__}.")
    known = {item.name: item for item in fields(GenerationRequest)}
    unknown = sorted(str(name)[:40] for name in values if name not in known)
    if unknown:
        raise InvalidRequestError(f"unknown field{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)} (the "
                                  "fields are GenerationRequest's, listed in /api/v1/openapi.json)")
    converted = {name: tuple(value) if known[name].metadata["kind"] in ("classes", "ids") and isinstance(value, list)
                 else value for name, value in values.items()}
    return GenerationRequest(**converted)


def guides(guidance_scale: float) -> bool:
    """Whether a run at this CFG is guided (GenerationRequest.guided; the page asks before it has a request)."""
    return guidance_scale > 1


def request_field(name: str) -> Field:
    return next(item for item in fields(GenerationRequest) if item.name == name)


def _whole(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_kind(kind: str, value: Any) -> bool:
    if kind == "whole":
        return _whole(value)
    if kind == "number":
        return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "text":
        return isinstance(value, str)
    if kind == "switch":
        return isinstance(value, bool)
    if kind == "prompts":
        return isinstance(value, ObjectPrompts)
    return isinstance(value, (tuple, list)) and all(_whole(c) and c >= 0 for c in value)


def _check(item: Field, value: Any) -> None:
    """The field's kind, then its range, length or choices; the message names the field."""
    meta, name = item.metadata, item.name
    if value is None and meta["optional"]:
        return
    if not _is_kind(meta["kind"], value):
        raise InvalidRequestError(f"{name} must be {KINDS[meta['kind']]}, got {type(value).__name__} "
                                  f"{repr(value)[:40]}")
    if meta["limits"] is not None:
        low, high = meta["limits"]
        if not low <= value <= high:
            raise InvalidRequestError(f"{name} must lie between {low} and {high}, got {value}")
    if meta["choices"] is not None and value not in meta["choices"]:
        raise InvalidRequestError(f"{name} must be one of {', '.join(meta['choices'])}, got {value!r}")
    if meta["kind"] == "text" and meta["choices"] is None and len(value) > MAX_PROMPT_CHARS:
        raise InvalidRequestError(f"The {name.replace('_', ' ')} is {len(value):,} characters long; at most "
                                  f"{MAX_PROMPT_CHARS:,} are allowed.")


@dataclass(frozen=True, kw_only=True)
class GenerationResult:
    """What one run produced. `images` is empty when the run was cancelled; `flagged[i]` says the safety checker
    hid image i; `mask` is what was repainted (PIL "L" at the output size, 255 = repainted, all 255 for "all");
    `objects` each repainted object's crop as it was sampled and its mask there."""

    images: list[Any]
    control_image: Any
    detections: list[Detection]
    seed: int
    seeds: list[int]
    timings: dict[str, float]
    run_card: dict[str, Any]
    mask: Any
    cancelled: bool = False
    fidelity: list[dict[str, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    flagged: list[bool] = field(default_factory=list)
    objects: list[Any] = field(default_factory=list)  # repaint_plan.ObjectOutcome: each object's crop and mask
