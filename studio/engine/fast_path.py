"""What the fast path turns on for a device: channels-last memory (with its GroupNorm) on CUDA, and CUDA graphs
unless turned off; the sentence says what is on and why (the page and the run card show it)."""

from __future__ import annotations

from typing import Any

import torch

from studio.core.settings import Settings
from studio.engine import group_norm


def prepare(models: tuple[Any, ...], device: str, settings: Settings) -> tuple[bool, str]:
    """(CUDA graphs wanted, what is on). `models` go channels-last on CUDA when CHANNELS_LAST is on."""
    if not device.startswith("cuda"):
        return False, "off: CUDA graphs need a CUDA GPU"
    if settings.channels_last:
        for module in models:
            module.to(memory_format=torch.channels_last)
        group_norm.enable(*models)
    if not settings.cuda_graphs:
        return False, "off: CUDA_GRAPHS=0"
    state = "on: UNet, ControlNet and VAE decode replayed from CUDA graphs"
    if settings.compile:
        state += ", compiled by torch.compile (the first image of each size compiles for minutes)"
    return True, state
