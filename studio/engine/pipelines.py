"""The diffusers pipelines the project runs, each with what it changes.

- `ControlNetPipeline`: diffusers' ControlNet pipeline, told its device once.
- `RepaintPipeline`: diffusers' ControlNet inpainting pipeline, told its device once, less one VAE encode per run,
  and the photo's encode kept for the next run on the same photo.
  With a 4-channel (base) UNet it keeps the picture outside the mask by blending latents every step; the masked
  picture's latents, which it also computes (a VAE encode of the whole picture), are the extra input of 9-channel
  inpainting UNets only and are never read. Here they are not computed. The photo's own encode (its latent
  distribution) is kept per photo (`keeping_encodes`): repainting the same photo again, with another prompt, seed,
  strength or object, samples from it instead of encoding again (the encoder costs about what a Fast step does).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
from diffusers import StableDiffusionControlNetInpaintPipeline, StableDiffusionControlNetPipeline
from PIL import Image


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


KEPT_ENCODES = 8  # photos whose latent distribution a repaint pipeline keeps (about 0.6 MB each at 1024x768)


class RepaintPipeline(RunsOn, StableDiffusionControlNetInpaintPipeline):
    photo_keys: list[tuple] | None = None  # the pictures of the call inside `keeping_encodes`, one key each

    @contextlib.contextmanager
    def keeping_encodes(self, pictures: list[Image.Image]) -> Iterator[None]:
        """The call inside encodes `pictures` once and keeps the encodes. A picture is known by its pixels' digest
        (a cryptographic one: one visitor's photo never stands for another's), size and mode; a call outside
        encodes and keeps nothing."""
        self.photo_keys = [(hashlib.blake2b(picture.tobytes(), digest_size=16).digest(), picture.size, picture.mode)
                           for picture in pictures]
        try:
            yield
        finally:
            self.photo_keys = None

    def _encode_vae_image(self, image: torch.Tensor, generator: Any) -> torch.Tensor:
        """diffusers' encode (a latent distribution per image, sampled with that image's generator), the
        distribution kept per photo key and VAE dtype."""
        keys = self.photo_keys
        if keys is None or not isinstance(generator, list) or len(keys) != image.shape[0]:
            return super()._encode_vae_image(image, generator)
        kept: OrderedDict[tuple, Any] = self.__dict__.setdefault("_kept_encodes", OrderedDict())
        dtype = next(self.vae.parameters()).dtype
        latents = []
        for i, key in enumerate(keys):
            key = (*key, tuple(image.shape[1:]), image.dtype, dtype)
            if key not in kept:
                kept[key] = self.vae.encode(image[i:i + 1]).latent_dist
                if len(kept) > KEPT_ENCODES:
                    kept.popitem(last=False)
            kept.move_to_end(key)
            latents.append(kept[key].sample(generator[i]))
        return self.vae.config.scaling_factor * torch.cat(latents, dim=0)

    def prepare_mask_latents(self, mask: torch.Tensor, masked_image: torch.Tensor, *args: Any, **kwargs: Any
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.unet.config.in_channels == 4:  # a 4-channel input is taken as latents as they are: no encode
            batch, _, height, width = masked_image.shape
            factor = self.vae_scale_factor
            masked_image = masked_image.new_zeros(batch, 4, height // factor, width // factor)
        return super().prepare_mask_latents(mask, masked_image, *args, **kwargs)
