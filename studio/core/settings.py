"""Every setting of the app in one place: its environment variable, its default and its parser, written once.

The defaults work today: the SD1.5 community mirror (the original `runwayml` repo was removed from the Hub),
ControlNet v1.1 Canny in its fp16 variant, and Ultralytics' nano segmentation model. Each model setting takes a
Hub id or a local folder / file, so the app also runs where the Hub cannot be reached. A value that cannot be
read stops the start with a message naming its variable (`MAX_PIXELS must be a whole number of pixels, not
'40M'`).

    python -m studio.core.settings MAX_UPLOAD_MB    # prints one setting, checked (the Makefile's `run` uses it)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from studio.core.presets import PRESETS, START_CHOICES

MODEL_SETS = ("tiny", "sd15")
ATTENTION_CHOICES = ("auto", "flash-attn", "xformers", "sdpa", "sliced")
Parser = Callable[[str, str], Any]


def parse_bool(name: str, value: str) -> bool:
    """The one reading of on/off settings: 1/true/on/yes and 0/false/off/no, any case; anything else is an error."""
    word = value.strip().lower()
    if word in ("1", "true", "on", "yes"):
        return True
    if word in ("0", "false", "off", "no"):
        return False
    raise ValueError(f"{name} must be 1 or 0 (or true/false, on/off, yes/no), not {value!r}")


def parse_gpus(name: str, value: str) -> tuple[int, ...] | None:
    """Empty or "all" means every visible GPU (None); otherwise comma-separated indices such as "0,1"."""
    if value.strip().lower() in ("", "all"):
        return None
    try:
        gpus = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{name} must be 'all' or comma-separated GPU indices such as 0,1, not {value!r}") from None
    if not gpus or min(gpus) < 0 or len(set(gpus)) != len(gpus):
        raise ValueError(f"{name} must name each GPU index once, not {value!r}")
    return gpus


def whole(unit: str, minimum: int = 1) -> Parser:
    def parse(name: str, value: str) -> int:
        if not value.strip().isdigit() or int(value) < minimum:
            raise ValueError(f"{name} must be a whole number of {unit} (at least {minimum}), not {value!r}")
        return int(value)
    return parse


def number(unit: str, minimum: float) -> Parser:
    def parse(name: str, value: str) -> float:
        try:
            parsed = float(value)
        except ValueError:
            parsed = float("nan")
        if not parsed >= minimum:  # NaN fails too
            raise ValueError(f"{name} must be a number of {unit} (at least {minimum:g}), not {value!r}")
        return parsed
    return parse


def one_of(*choices: str) -> Parser:
    def parse(name: str, value: str) -> str:
        if value.lower() not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
        return value.lower()
    return parse


def text(name: str, value: str) -> str:
    return value


def text_or_none(name: str, value: str) -> str | None:
    """A model id that `none` turns off."""
    return None if value.lower() == "none" else value


def folder(name: str, value: str) -> Path:
    return Path(value).expanduser()


def id_list(name: str, value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _default_outputs_dir() -> Path:
    """/kaggle/working/outputs on Kaggle (saved with the notebook's output), else outputs/ beside the app."""
    kaggle = Path("/kaggle/working")
    return kaggle / "outputs" if kaggle.is_dir() else Path(__file__).resolve().parents[2] / "outputs"


def _default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "yolo-controlnet-studio"


def setting(env: str | None, default: Any, parse: Parser = text) -> Any:
    """A Settings field read from `env` (None: set only from code); a callable default is a factory."""
    metadata = {"env": env, "parse": parse}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


OFF_WHEN_EMPTY = ("OUTPUTS_DIR",)  # set to nothing, these turn their feature off
JOBS_BACKENDS = ("local", "ray")  # where jobs run: this process's workers, or a Ray Serve deployment


@dataclass(frozen=True)
class Settings:
    """What the app loads and how; `Settings.from_env()` reads the environment (README: Configuration)."""

    models: str = setting("MODELS", "sd15", one_of(*MODEL_SETS))
    sd15_model: str = setting("SD15_MODEL", "stable-diffusion-v1-5/stable-diffusion-v1-5")
    controlnet_model: str = setting("CONTROLNET_MODEL", "lllyasviel/control_v11p_sd15_canny")
    yolo_model: str = setting("YOLO_MODEL", "yolo26n-seg.pt")  # segments: detections come with masks
    # find by name: YOLOE's small segmenter, loaded at the first request that names things
    open_vocab_model: str = setting("OPEN_VOCAB_MODEL", "yoloe-26s-seg.pt")
    variant: str = setting("MODEL_VARIANT", "fp16")
    # an inpainting checkpoint (its unet/ is loaded); None: the base UNet inpaints. With MODELS=tiny, any value
    # loads the tiny set's 9-channel UNet.
    sd15_inpaint_model: str | None = setting("SD15_INPAINT_MODEL", None)
    taesd_model: str | None = setting("TAESD_MODEL", "madebyollin/taesd", text_or_none)
    preset_lora_fast: str = setting("PRESET_LORA_FAST", PRESETS["fast"].lora)
    preset_lora_turbo: str = setting("PRESET_LORA_TURBO", PRESETS["turbo"].lora)
    start_preset: str = setting("START_PRESET", "auto", one_of(*START_CHOICES))  # "auto": Fast without a GPU
    attention: str = setting("ATTENTION", "auto", one_of(*ATTENTION_CHOICES))
    device: str | None = setting("DEVICE", None)
    gpus: tuple[int, ...] | None = setting("GPUS", None, parse_gpus)
    cache_dir: Path = setting("APP_CACHE_DIR", _default_cache_dir, folder)
    cuda_graphs: bool = setting("CUDA_GRAPHS", True, parse_bool)
    channels_last: bool = setting("CHANNELS_LAST", True, parse_bool)
    compile: bool = setting("COMPILE", False, parse_bool)
    safety_checker: bool = setting("SAFETY_CHECKER", False, parse_bool)
    max_upload_mb: int = setting("MAX_UPLOAD_MB", 20, whole("megabytes"))
    max_pixels: int = setting("MAX_PIXELS", 40_000_000, whole("pixels"))
    max_side: int = setting("MAX_SIDE", 2048, whole("pixels", minimum=64))
    max_aspect: float = setting("MAX_ASPECT", 8.0, number("times the short side", 1.0))
    preview_cache_mb: int = setting("PREVIEW_CACHE_MB", 256, whole("megabytes"))
    max_queue: int = setting("MAX_QUEUE", 20, whole("jobs", minimum=1))
    max_queued_per_visitor: int = setting("MAX_QUEUED_PER_VISITOR", 2, whole("jobs", minimum=0))
    abandon_s: float = setting("ABANDON_S", 60.0, number("seconds", 1.0))
    # the sidebar's queue line: each poll sends the page's widget states up and the line down (a few KB of a
    # metered tunnel), so it polls often only while the server has work
    queue_poll_s: float = setting("QUEUE_POLL_S", 10.0, number("seconds", 1.0))
    queue_idle_poll_s: float = setting("QUEUE_IDLE_POLL_S", 300.0, number("seconds", 1.0))
    trusted_proxy_hops: int = setting("TRUSTED_PROXY_HOPS", 0, whole("proxies", minimum=0))
    outputs_dir: Path | None = setting("OUTPUTS_DIR", _default_outputs_dir, folder)  # OUTPUTS_DIR= (empty): off
    api_result_ttl_s: int = setting("API_RESULT_TTL_S", 3600, whole("seconds"))
    api_result_mb: int = setting("API_RESULT_MB", 512, whole("megabytes"))
    lora_dir: Path | None = setting("LORA_DIR", None, folder)
    lora_hub_ids: tuple[str, ...] = setting("LORA_HUB_IDS", (), id_list)
    allow_any_lora: bool = setting("ALLOW_ANY_LORA", False, parse_bool)
    lora_max_mb: int = setting("LORA_MAX_MB", 400, whole("megabytes"))
    jobs_backend: str = setting("JOBS_BACKEND", "local", one_of(*JOBS_BACKENDS))
    # "local": a Ray instance started in this process; "auto": the cluster this machine joined (`ray start`);
    # or a cluster's address. Ray itself reads the same variable.
    ray_address: str = setting("RAY_ADDRESS", "local")
    ray_replicas: int | None = setting("RAY_REPLICAS", None, whole("replicas", minimum=1))  # None: autoscaling
    hub_timeout_s: float = setting(None, 5.0)

    def __post_init__(self) -> None:
        one_of(*MODEL_SETS)("MODELS", self.models)
        one_of(*ATTENTION_CHOICES)("ATTENTION", self.attention)
        one_of(*JOBS_BACKENDS)("JOBS_BACKEND", self.jobs_backend)

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from environment variables; keyword arguments that are not None win over the environment."""
        values: dict[str, object] = {}
        for item in fields(cls):
            env = item.metadata["env"]
            raw = os.environ.get(env, "").strip() if env else ""
            if raw:
                values[item.name] = item.metadata["parse"](env, raw)
            elif env in OFF_WHEN_EMPTY and env in os.environ:
                values[item.name] = None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @property
    def streamlit_upload_mb(self) -> int:
        """Streamlit's own upload limit (server.maxUploadSize): above MAX_UPLOAD_MB, so that a file over the limit
        reaches the page and is refused there by its name and size. Streamlit refuses a larger one in the browser
        with only a red mark whose reason is hover text."""
        return UPLOAD_HEADROOM * self.max_upload_mb

    def preset_lora(self, preset: str) -> str | None:
        """The distillation LoRA a preset loads: its PRESET_LORA_<NAME> setting, or None for a preset without."""
        return {"fast": self.preset_lora_fast, "turbo": self.preset_lora_turbo}.get(preset)


UPLOAD_HEADROOM = 2  # Streamlit takes uploads up to twice MAX_UPLOAD_MB: see Settings.streamlit_upload_mb
DERIVED = {"STREAMLIT_UPLOAD_MB": "streamlit_upload_mb"}  # values made from the settings, printed as they are


def variables() -> dict[str, str]:
    """Each environment variable and the field it sets."""
    return {item.metadata["env"]: item.name for item in fields(Settings) if item.metadata["env"]}


def main(argv: list[str]) -> int:
    """Print one setting's value as the app reads it, or say what is wrong with it (exit 1)."""
    names = {**variables(), **DERIVED}
    if len(argv) != 1 or argv[0] not in names:
        print(f"usage: python -m studio.core.settings VARIABLE  (one of {', '.join(names)})", file=sys.stderr)
        return 2
    try:
        print(getattr(Settings.from_env(), names[argv[0]]))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
