"""diffusers' ControlNet inpainting pipeline, less one VAE encode per run.

With a 4-channel (base) UNet the inpainting pipeline keeps the picture outside the mask by blending latents
every step; the masked picture's latents, which it also computes (a VAE encode of the whole picture), are
the extra input of 9-channel inpainting UNets only and are never read. Here they are not computed.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import StableDiffusionControlNetInpaintPipeline


class RepaintPipeline(StableDiffusionControlNetInpaintPipeline):
    def prepare_mask_latents(self, mask: torch.Tensor, masked_image: torch.Tensor, *args: Any, **kwargs: Any
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.unet.config.in_channels == 4:  # a 4-channel input is taken as latents as they are: no encode
            batch, _, height, width = masked_image.shape
            factor = self.vae_scale_factor
            masked_image = masked_image.new_zeros(batch, 4, height // factor, width // factor)
        return super().prepare_mask_latents(mask, masked_image, *args, **kwargs)
