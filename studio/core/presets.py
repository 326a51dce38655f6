"""Speed presets: scheduler, steps, CFG and the distillation LoRA that makes few steps work.

On a T4 the UNet and ControlNet themselves are the cost, so the lever is fewer network evaluations: a
distillation LoRA lets SD1.5 (and ControlNet Canny with it) denoise in 4 to 8 steps, and at CFG 1 every step
runs the UNet once instead of twice (diffusers skips the unconditional half when guidance_scale <= 1).

- quality: UniPC, 20 steps, CFG 7.5, no distillation (the ControlNet Canny demo's settings).
- fast: TCD-LoRA with TCDScheduler, 4 steps, CFG 1, gamma 0.3 (diffusers' TCD guide: 4 to 50 steps; TCD keeps
  more detail than LCM at the same step count).
- turbo: LCM-LoRA with LCMScheduler, 2 steps, CFG 1: the fewest steps that still follow the edges (LCM-LoRA
  runs in 2 to 8 steps; diffusers documents it with ControlNet Canny).
- custom: whatever scheduler, steps and CFG the person sets; the LCM or TCD scheduler brings its LoRA along.

The LoRA ids are the defaults; PRESET_LORA_FAST / PRESET_LORA_TURBO point a preset at a local file or
another Hub id (settings.py), and the tiny model set brings a tiny distillation LoRA of its own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    label: str
    scheduler: str
    steps: int
    guidance_scale: float
    lora: str | None  # the distillation LoRA's Hub id (None: the base model alone)
    lora_weight: float = 1.0
    help: str = ""


PRESETS: dict[str, Preset] = {
    "quality": Preset("Quality", "unipc", 20, 7.5, None,
                      help="UniPC, 20 steps, CFG 7.5: the most detail, about 4 s per image on a T4."),
    "fast": Preset("Fast", "tcd", 4, 1.0, "h1t/TCD-SD15-LoRA",
                   help="TCD-LoRA, 4 steps, no CFG: 10x fewer network evaluations than Quality."),
    "turbo": Preset("Turbo", "lcm", 2, 1.0, "latent-consistency/lcm-lora-sdv1-5",
                    help="LCM-LoRA, 2 steps, no CFG: the fastest that still follows the edges, less detail."),
    "custom": Preset("Custom", "unipc", 20, 7.5, None,
                     help="your own scheduler, steps and CFG (changing a preset's by hand picks it): the base model, "
                          "or with the LCM or TCD scheduler that scheduler's distillation LoRA."),
}
CUSTOM = "custom"
# START_PRESET's choices: the preset the page opens on; "auto" picks by the server's device (start_preset)
START_CHOICES = ("auto", "quality", "fast", "turbo")


def start_preset(chosen: str, gpu: bool) -> str:
    """The preset the page opens on: START_PRESET's, or for "auto" Quality on a GPU and Fast without one (on a
    CPU a Quality picture takes minutes; Fast runs a fifth of its steps, each once: no CFG)."""
    if chosen != "auto":
        return chosen
    return "quality" if gpu else "fast"


def distilled_by(preset: str, scheduler: str | None) -> str | None:
    """The preset whose distillation LoRA a run fuses: a preset's own; for Custom, the preset whose scheduler it
    uses, since LCM and TCD sample well only with their LoRA and UniPC and the others only without one."""
    if preset != CUSTOM:
        return preset if PRESETS[preset].lora else None
    return next((name for name, p in PRESETS.items() if p.lora and p.scheduler == scheduler), None)
# TCD's gamma (diffusers passes it to the scheduler as `eta`): 0.3 is the TCD authors' default.
TCD_GAMMA = 0.3

