"""What one run asks for and what it gives back: plain data, validated on construction, no model code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from control_image import CONTROL_MODES, RESIZE_MODES
from detections import Detection

SCHEDULERS = ("unipc", "dpmpp_2m_karras", "euler_a", "ddim")  # built by schedulers.py
NEGATIVE_PROMPT = ("longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, cropped, "
                   "worst quality, low quality")
SEED_MAX = 2**32 - 1


class InvalidRequestError(ValueError):
    """A generation setting is out of range; the message names the setting and its range."""


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise InvalidRequestError(f"{name} must lie between {low} and {high}, got {value}")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidRequestError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class GenerationRequest:
    """Every knob of one run, with the defaults of the ControlNet Canny demo."""

    prompt: str = ""
    added_prompt: str = "best quality, extremely detailed"
    negative_prompt: str = NEGATIVE_PROMPT
    num_images: int = 1
    steps: int = 20
    guidance_scale: float = 7.5
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
    scheduler: str = "unipc"
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
    detect_conf: float = 0.25
    detect_iou: float = 0.45
    detect_classes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _check_range("num_images", self.num_images, 1, 8)
        _check_range("steps", self.steps, 1, 150)
        _check_range("guidance_scale", self.guidance_scale, 0.0, 30.0)
        _check_range("resolution", self.resolution, 64, 2048)
        if self.size_multiple not in (8, 16, 32, 64):
            raise InvalidRequestError(f"size_multiple must be 8, 16, 32 or 64, got {self.size_multiple}")
        _check_range("controlnet_scale", self.controlnet_scale, 0.0, 2.0)
        _check_range("control_start", self.control_start, 0.0, 1.0)
        _check_range("control_end", self.control_end, 0.0, 1.0)
        _check_range("canny_low", self.canny_low, 1, 255)
        _check_range("canny_high", self.canny_high, 1, 255)
        _check_range("detect_conf", self.detect_conf, 0.0, 1.0)
        _check_range("detect_iou", self.detect_iou, 0.0, 1.0)
        if self.seed is not None:
            _check_range("seed", self.seed, 0, SEED_MAX)
        if self.control_start > self.control_end:
            raise InvalidRequestError("control_start must not be after control_end")
        if (self.width is None) != (self.height is None):
            raise InvalidRequestError("give both width and height, or neither (then resolution sets the size)")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (not 64 <= value <= 2048 or value % 8):
                raise InvalidRequestError(f"{name} must be a multiple of 8 between 64 and 2048, got {value}")
        _choice("resize_mode", self.resize_mode, RESIZE_MODES)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _check_range("lora_weight", self.lora_weight, 0.0, 2.0)
        _choice("control_mode", self.control_mode, CONTROL_MODES)
        _choice("control_source", self.control_source, ("canny", "edge_map"))
        _check_range("control_padding", self.control_padding, 0.0, 1.0)
        _check_range("control_feather", self.control_feather, 0, 64)
        _check_range("background_weight", self.background_weight, 0.0, 1.0)

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


@dataclass
class ControlPreview:
    """The control image a request would use, before any denoising."""

    control_image: Any
    detections: list[Detection]
    warnings: list[str]
