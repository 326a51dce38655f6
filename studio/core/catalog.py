"""The schedulers the app offers and the models it loads, each listed once.

The page's scheduler choices, the request's validation, the engine's scheduler builders and the A1111 text all
read `SCHEDULERS`; model loading, the offline check, prefetch and the run card all read `MODELS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from studio.core.presets import PRESETS
from studio.core.settings import Settings


@dataclass(frozen=True)
class Scheduler:
    label: str  # what the page shows
    a1111: str  # what A1111's infotext calls it
    most_steps: int | None = None  # LCM and TCD pick their steps from their distillation's 50 (diffusers refuses more)


# LCM and TCD sample well only with their distillation LoRA (presets.py): choosing one brings it along.
SCHEDULERS: dict[str, Scheduler] = {
    "unipc": Scheduler("UniPC", "UniPC"),
    "dpmpp_2m_karras": Scheduler("DPM++ 2M Karras", "DPM++ 2M Karras"),
    "euler_a": Scheduler("Euler ancestral", "Euler a"),
    "ddim": Scheduler("DDIM", "DDIM"),
    "lcm": Scheduler("LCM (with the LCM-LoRA)", "LCM", most_steps=50),
    "tcd": Scheduler("TCD (with the TCD-LoRA)", "TCD", most_steps=50),
}


@dataclass(frozen=True)
class Model:
    """One model the app loads. `probe` is a file whose presence in the Hugging Face cache shows the model is
    there; `folders` are the weight folders prefetch fetches ("" for the repository's top); `weight_name` is
    the one weight file of a LoRA; `required` models stop the start when missing, the others are left out."""

    key: str
    what: str
    env: str
    probe: str = "config.json"
    folders: tuple[str, ...] = ("",)
    weight_name: str | None = None
    required: bool = True


LORA_FILE = "pytorch_lora_weights.safetensors"
MODELS: tuple[Model, ...] = (
    Model("sd15", "Stable Diffusion 1.5 model", "SD15_MODEL", "model_index.json", ("unet", "vae", "text_encoder")),
    Model("controlnet", "ControlNet", "CONTROLNET_MODEL"),
    Model("yolo", "detector", "YOLO_MODEL", probe=""),
    Model("open_vocab", "open-vocabulary segmenter", "OPEN_VOCAB_MODEL", probe="", required=False),
    Model("taesd", "TAESD", "TAESD_MODEL", required=False),
    Model("inpaint", "inpainting model", "SD15_INPAINT_MODEL", "unet/config.json", ("unet",)),
    *(Model(f"lora_{name}", f"{preset.label} preset's distillation LoRA", f"PRESET_LORA_{name.upper()}",
            LORA_FILE, weight_name=LORA_FILE, required=False)
      for name, preset in PRESETS.items() if preset.lora),
)
ULTRALYTICS = ("yolo", "open_vocab")  # fetched by Ultralytics from its own releases, not from the Hub
SETTING_OF = {"sd15": "sd15_model", "controlnet": "controlnet_model", "yolo": "yolo_model",
              "open_vocab": "open_vocab_model", "taesd": "taesd_model",
              "inpaint": "sd15_inpaint_model"}


def model(key: str) -> Model:
    return next(m for m in MODELS if m.key == key)


def sources(settings: Settings) -> dict[str, str]:
    """Each model the real set loads with these settings: key -> Hub id or local path (unset ones left out)."""
    found = {}
    for item in MODELS:
        if item.key.startswith("lora_"):
            source = settings.preset_lora(item.key.removeprefix("lora_"))
        else:
            source = getattr(settings, SETTING_OF[item.key])
        if source:
            found[item.key] = source
    return found
