"""What one run asks for and what it gives back: plain data, validated on construction, no model code."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

from control_image import CONTROL_MODES, REGENERATE_MODES, RESIZE_MODES
from detections import Detection
from presets import PRESETS

# Each scheduler with the label the page shows; schedulers.py builds each of them. LCM and TCD are for the
# distillation LoRAs of the fast presets (presets.py).
SCHEDULERS = {"unipc": "UniPC", "dpmpp_2m_karras": "DPM++ 2M Karras", "euler_a": "Euler ancestral", "ddim": "DDIM",
              "lcm": "LCM", "tcd": "TCD"}
NEGATIVE_PROMPT = ("longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, cropped, "
                   "worst quality, low quality")
SEED_MAX = 2**32 - 1


# The allowed range of every numeric setting: the request checks it, the page's widgets are built from it.
LIMITS: dict[str, tuple[float, float]] = {
    "num_images": (1, 8), "steps": (1, 150), "guidance_scale": (0.0, 30.0), "resolution": (64, 2048),
    "width": (64, 2048), "height": (64, 2048), "controlnet_scale": (0.0, 2.0), "control_start": (0.0, 1.0),
    "control_end": (0.0, 1.0), "lora_weight": (0.0, 2.0), "canny_low": (1, 255), "canny_high": (1, 255),
    "control_padding": (0.0, 1.0), "control_feather": (0, 64), "background_weight": (0.0, 1.0),
    "detect_conf": (0.0, 1.0), "detect_iou": (0.0, 1.0), "seed": (0, SEED_MAX),
}


MAX_PROMPT_CHARS = 1000  # CLIP reads 75 tokens (a few hundred characters); more only costs time and memory

# What kind of value each field takes; a wrong kind is refused with a message before any range is checked.
WHOLE_NUMBERS = ("num_images", "steps", "seed", "resolution", "size_multiple", "width", "height", "canny_low",
                 "canny_high", "control_feather")
NUMBERS = ("guidance_scale", "controlnet_scale", "control_start", "control_end", "lora_weight", "control_padding",
           "background_weight", "detect_conf", "detect_iou")
TEXTS = ("prompt", "added_prompt", "negative_prompt", "preset", "resize_mode", "scheduler", "lora", "control_mode",
         "control_source", "regenerate")
SWITCHES = ("guess_mode", "invert_edge_map", "fast_decode")
CLASS_LISTS = ("control_classes", "detect_classes")
OPTIONAL = ("seed", "width", "height", "lora", "control_classes", "detect_classes")


class InvalidRequestError(ValueError):
    """A generation setting is out of range; the message names the setting and its range."""


def _check_range(name: str, value: float) -> None:
    low, high = LIMITS[name]
    if not low <= value <= high:
        raise InvalidRequestError(f"{name} must lie between {low} and {high}, got {value}")


def _whole(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check_kind(name: str, value: Any) -> None:
    if value is None and name in OPTIONAL:
        return
    if name in WHOLE_NUMBERS:
        ok, kind = _whole(value), "a whole number"
    elif name in NUMBERS:
        ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
        kind = "a finite number"
    elif name in TEXTS:
        ok, kind = isinstance(value, str), "text"
    elif name in SWITCHES:
        ok, kind = isinstance(value, bool), "true or false"
    else:
        ok = isinstance(value, (tuple, list)) and all(_whole(c) and c >= 0 for c in value)
        kind = "a list of class ids (whole numbers)"
    if not ok:
        raise InvalidRequestError(f"{name} must be {kind}, got {type(value).__name__} {repr(value)[:40]}")


def _choice(name: str, value: str, choices: dict[str, str] | tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidRequestError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class GenerationRequest:
    """Every knob of one run, with the defaults of the ControlNet Canny demo.

    `preset` ("quality", "fast", "turbo": presets.py) fills `scheduler`, `steps` and `guidance_scale` where
    they are left at None, and brings its distillation LoRA; a value given explicitly wins."""

    prompt: str = ""
    added_prompt: str = "best quality, extremely detailed"
    negative_prompt: str = NEGATIVE_PROMPT
    preset: str = "quality"
    num_images: int = 1
    steps: int = None  # type: ignore[assignment]  # None: the preset's; an int after construction
    guidance_scale: float = None  # type: ignore[assignment]
    seed: int | None = None
    resolution: int = 512
    size_multiple: int = 8
    width: int | None = None
    height: int | None = None
    resize_mode: str = "resize"
    controlnet_scale: float = 1.0
    control_start: float = 0.0
    control_end: float = 1.0
    guess_mode: bool = False
    scheduler: str = None  # type: ignore[assignment]
    fast_decode: bool = False  # decode the final latents with TAESD: fastest, slightly softer
    lora: str | None = None
    lora_weight: float = 0.8
    canny_low: int = 100
    canny_high: int = 200
    control_mode: str = "full"
    control_classes: tuple[int, ...] | None = None
    control_padding: float = 0.0
    control_feather: int = 0
    background_weight: float = 0.0
    control_source: str = "canny"
    invert_edge_map: bool = False
    regenerate: str = "all"  # "objects": repaint only the chosen detections, "background": all but them
    detect_conf: float = 0.25
    detect_iou: float = 0.45
    detect_classes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _check_kind("preset", self.preset)
        _choice("preset", self.preset, PRESETS)
        preset = PRESETS[self.preset]
        for name in ("scheduler", "steps", "guidance_scale"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, getattr(preset, name))
        for name in (*WHOLE_NUMBERS, *NUMBERS, *TEXTS, *SWITCHES, *CLASS_LISTS):
            _check_kind(name, getattr(self, name))
        for name in ("prompt", "added_prompt", "negative_prompt"):
            if len(getattr(self, name)) > MAX_PROMPT_CHARS:
                raise InvalidRequestError(f"The {name.replace('_', ' ')} is {len(getattr(self, name)):,} characters "
                                          f"long; at most {MAX_PROMPT_CHARS:,} are allowed.")
        for name in LIMITS:
            if getattr(self, name) is not None:
                _check_range(name, getattr(self, name))
        if self.size_multiple not in (8, 16, 32, 64):
            raise InvalidRequestError(f"size_multiple must be 8, 16, 32 or 64, got {self.size_multiple}")
        if self.control_start > self.control_end:
            raise InvalidRequestError("control_start must not be after control_end")
        if (self.width is None) != (self.height is None):
            raise InvalidRequestError("give both width and height, or neither (then resolution sets the size)")
        for name in ("width", "height"):
            if getattr(self, name) is not None and getattr(self, name) % 8:
                raise InvalidRequestError(f"{name} must be a multiple of 8, got {getattr(self, name)}")
        _choice("resize_mode", self.resize_mode, RESIZE_MODES)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("control_mode", self.control_mode, CONTROL_MODES)
        _choice("control_source", self.control_source, ("canny", "edge_map"))
        _choice("regenerate", self.regenerate, REGENERATE_MODES)

    @property
    def full_prompt(self) -> str:
        return ", ".join(p for p in (self.prompt.strip(), self.added_prompt.strip()) if p)


@dataclass
class GenerationResult:
    """What one run produced. `images` is empty when the run was cancelled."""

    images: list[Any]
    control_image: Any
    detections: list[Detection]
    seed: int
    timings: dict[str, float]
    run_card: dict[str, Any]
    cancelled: bool = False
    seeds: list[int] = field(default_factory=list)
    fidelity: list[dict[str, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    flagged: list[bool] = field(default_factory=list)
    mask: Any = None  # what was repainted: PIL "L" at the output size, 255 = repainted (all 255 for "all")


@dataclass
class ControlPreview:
    """The control image a request would use, before any denoising."""

    control_image: Any
    detections: list[Detection]
    warnings: list[str]
    mask: Any = None  # what a regeneration of part of the picture repaints ("L", 255: repainted), else None
