"""Soft edits: differential diffusion (Levin and Fried, 2024) inside diffusers' inpainting loop.

A repaint mask feathered to values between 0 and 1 is read as a strength per pixel. With a base (4-channel) UNet,
diffusers' inpainting pipeline blends after every step: the sampled latents where its mask is 1, the photo's latents
noised to the next timestep where it is 0. Here that mask changes from step to step: a pixel of strength `s` joins
the sampled ones once `s > 1 - j / n` (j steps of n done), so the inside is repainted from the first step, the
feathered border only over its last steps, and a pixel of strength 0 never (the paste keeps the photo's pixels
there exactly). A hard mask (0 or 255 only) gives the hard mask at every step: the same pixels as the hard repaint.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


class SoftMask:
    """The mask of pixels released into sampling, step by step, for a run of `steps` denoising steps."""

    def __init__(self, mask: Image.Image, steps: int) -> None:
        self.strength = np.asarray(mask.convert("L"), np.float32) / 255.0
        self.steps = steps
        self._latent: torch.Tensor | None = None

    def released(self, done: int) -> Image.Image:
        """The pixels sampled once `done` steps have run (255), the others kept as the photo (0): the mask the
        pipeline takes for its first blend is `released(1)`."""
        return Image.fromarray(np.where(self.strength > 1.0 - done / self.steps, 255, 0).astype(np.uint8), "L")

    def advance(self, step: int, mask: torch.Tensor) -> None:
        """From diffusers' step-end callback: after step `step` (0-based), write into the pipeline's own latent mask
        (batch x 1 x h x w, blended after the next step) the pixels released once `step + 2` steps have run."""
        if self._latent is None:  # diffusers scales its mask to the latents by nearest neighbours: the same here
            self._latent = torch.nn.functional.interpolate(torch.from_numpy(self.strength)[None, None],
                                                           size=mask.shape[-2:]).to(mask.device)
        mask.copy_((self._latent > 1.0 - (step + 2) / self.steps).to(mask.dtype).expand_as(mask))
