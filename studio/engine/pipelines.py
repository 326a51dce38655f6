"""The diffusers pipelines the project runs, each with what it changes.

- `ControlNetPipeline`: diffusers' ControlNet pipeline, told its device once.
- `RepaintPipeline`: diffusers' ControlNet inpainting pipeline, told its device once, less one VAE encode per run.
  With a 4-channel (base) UNet it keeps the picture outside the mask by blending latents every step; the masked
  picture's latents, which it also computes (a VAE encode of the whole picture), are the extra input of 9-channel
  inpainting UNets only and are never read. Here they are not computed.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import StableDiffusionControlNetInpaintPipeline, StableDiffusionControlNetPipeline


class RunsOn:
    """The device a call runs on, as set by the project. diffusers finds it anew at every call, walking every module
    of every component for group-offloading hooks (10 ms of a 0.17 s Fast call on an H200). The project never
    group-offloads, and its model CPU offload (an out-of-memory remedy) runs on the same device."""

    runs_on: torch.device | None = None

    @property
    def _execution_device(self) -> torch.device:
        return self.runs_on if self.runs_on is not None else super()._execution_device  # type: ignore[misc]


class ControlNetPipeline(RunsOn, StableDiffusionControlNetPipeline):
    pass


class RepaintPipeline(RunsOn, StableDiffusionControlNetInpaintPipeline):
    def prepare_mask_latents(self, mask: torch.Tensor, masked_image: torch.Tensor, *args: Any, **kwargs: Any
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.unet.config.in_channels == 4:  # a 4-channel input is taken as latents as they are: no encode
            batch, _, height, width = masked_image.shape
            factor = self.vae_scale_factor
            masked_image = masked_image.new_zeros(batch, 4, height // factor, width // factor)
        return super().prepare_mask_latents(mask, masked_image, *args, **kwargs)
