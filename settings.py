"""Every setting of the app in one place, read from environment variables.

The defaults work today: the SD1.5 community mirror (the original `runwayml` repo was removed from the
Hub), ControlNet v1.1 Canny in its fp16 variant, and Ultralytics' default nano detector. Each model
setting takes a Hub id or a local folder / file, so the app also runs where the Hub cannot be reached.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_CONTROLNET = "lllyasviel/control_v11p_sd15_canny"
DEFAULT_YOLO = "yolo26n-seg.pt"  # a segmentation model: detections come with masks (box-only models work too)
DEFAULT_TAESD = "madebyollin/taesd"  # diffusers' AutoencoderTiny for SD1.5 latents: live previews, fast decode
MODEL_SETS = ("tiny", "sd15")
ATTENTION_CHOICES = ("auto", "flash-attn", "xformers", "sdpa", "sliced")


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def parse_bool(name: str, value: str) -> bool:
    """The one reading of on/off settings: 1/true/on/yes and 0/false/off/no, any case; anything else is an error."""
    word = value.strip().lower()
    if word in ("1", "true", "on", "yes"):
        return True
    if word in ("0", "false", "off", "no"):
        return False
    raise ValueError(f"{name} must be 1 or 0 (or true/false, on/off, yes/no), not {value!r}")


def parse_gpus(value: str) -> tuple[int, ...] | None:
    """GPUS: empty or "all" means every visible GPU (None); otherwise comma-separated indices such as "0,1"."""
    if value.strip().lower() in ("", "all"):
        return None
    try:
        gpus = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"GPUS must be 'all' or comma-separated GPU indices such as 0,1, not {value!r}") from None
    if not gpus or min(gpus) < 0 or len(set(gpus)) != len(gpus):
        raise ValueError(f"GPUS must name each GPU index once, not {value!r}")
    return gpus


def _default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "yolo-controlnet-studio"


@dataclass(frozen=True)
class Settings:
    """What the app loads and how; `Settings.from_env()` reads the environment."""

    models: str = "sd15"
    sd15_model: str = DEFAULT_SD15
    controlnet_model: str = DEFAULT_CONTROLNET
    yolo_model: str = DEFAULT_YOLO
    variant: str = "fp16"
    attention: str = "auto"
    device: str | None = None
    gpus: tuple[int, ...] | None = None
    cache_dir: Path = field(default_factory=_default_cache_dir)
    cuda_graphs: bool = True
    channels_last: bool = True
    compile: bool = False
    safety_checker: bool = False
    max_upload_mb: int = 20
    lora_dir: Path | None = None
    lora_hub_ids: tuple[str, ...] = ()
    allow_any_lora: bool = False
    lora_max_mb: int = 400
    max_pixels: int = 40_000_000
    max_side: int = 2048
    max_aspect: float = 8.0
    hub_timeout_s: float = 5.0
    taesd_model: str | None = DEFAULT_TAESD
    # an inpainting checkpoint (its unet/ is loaded); None: the base UNet inpaints. With MODELS=tiny, any value
    # loads the tiny set's 9-channel UNet.
    sd15_inpaint_model: str | None = None
    preset_loras: tuple[tuple[str, str], ...] = ()  # (preset, LoRA id or file) pairs that replace presets.py's

    def __post_init__(self) -> None:
        if self.models not in MODEL_SETS:
            raise ValueError(f"MODELS must be one of {', '.join(MODEL_SETS)}, not {self.models!r}")
        if self.attention not in ATTENTION_CHOICES:
            raise ValueError(f"ATTENTION must be one of {', '.join(ATTENTION_CHOICES)}, not {self.attention!r}")

    @classmethod
    def from_env(cls, **overrides: object) -> "Settings":
        """Settings from environment variables; keyword arguments win over the environment."""
        values: dict[str, object] = {
            "models": _env("MODELS", "sd15").lower(),
            "sd15_model": _env("SD15_MODEL", DEFAULT_SD15),
            "controlnet_model": _env("CONTROLNET_MODEL", DEFAULT_CONTROLNET),
            "yolo_model": _env("YOLO_MODEL", DEFAULT_YOLO),
            "variant": _env("MODEL_VARIANT", "fp16"),
            "attention": _env("ATTENTION", "auto").lower(),
            "device": os.environ.get("DEVICE") or None,
            "cache_dir": Path(_env("APP_CACHE_DIR", str(_default_cache_dir()))),
            "gpus": parse_gpus(_env("GPUS", "all")),
            "cuda_graphs": parse_bool("CUDA_GRAPHS", _env("CUDA_GRAPHS", "1")),
            "channels_last": parse_bool("CHANNELS_LAST", _env("CHANNELS_LAST", "1")),
            "compile": parse_bool("COMPILE", _env("COMPILE", "0")),
            "safety_checker": parse_bool("SAFETY_CHECKER", _env("SAFETY_CHECKER", "0")),
            "max_upload_mb": int(_env("MAX_UPLOAD_MB", "20")),
            "lora_dir": Path(_env("LORA_DIR", "")).expanduser() if _env("LORA_DIR", "") else None,
            "lora_hub_ids": tuple(part.strip() for part in _env("LORA_HUB_IDS", "").split(",") if part.strip()),
            "allow_any_lora": parse_bool("ALLOW_ANY_LORA", _env("ALLOW_ANY_LORA", "0")),
            "lora_max_mb": int(_env("LORA_MAX_MB", "400")),
            "max_pixels": int(_env("MAX_PIXELS", "40000000")),
            "max_side": int(_env("MAX_SIDE", "2048")),
            "max_aspect": float(_env("MAX_ASPECT", "8")),
            "taesd_model": None if _env("TAESD_MODEL", DEFAULT_TAESD).lower() == "none" else _env("TAESD_MODEL",
                                                                                                   DEFAULT_TAESD),
            "sd15_inpaint_model": _env("SD15_INPAINT_MODEL", "") or None,
            "preset_loras": tuple((name, _env(f"PRESET_LORA_{name.upper()}", "")) for name in ("fast", "turbo")
                                  if _env(f"PRESET_LORA_{name.upper()}", "")),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
