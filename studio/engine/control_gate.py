"""The ControlNet only where it acts.

diffusers calls the ControlNet at every denoising step, also where its scale is 0 (the steps outside
`control_guidance_start/end`, or a strength of 0), and multiplies its residuals by that 0 (its PR #7584, which would
skip it, is still open). On a T4 one ControlNet evaluation is about a quarter of a step's arithmetic, so
`control_end=0.5` wastes an eighth of the run. `GatedControlNet` is the ControlNet with that call answered without
running the model: no residuals, so the UNet adds none. Adding a residual of zeros changes no value, so the pixels
are those of the ungated run.

One case needs tensors: in guess mode with CFG diffusers pads the residuals with zeros for the unconditional half
(`torch.cat([zeros_like(d), d])`), so there the gate returns zeros of the shapes the ControlNet would give, read
from its own layers. The gate sits in front of `nn.Module.__call__`, so the CUDA-graph wrapper of `forward`
(cuda_graphs.py) and every hook see only the evaluations that run.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import ControlNetModel

Residuals = tuple[list[torch.Tensor] | None, torch.Tensor | None]


class GatedControlNet(ControlNetModel):
    """A ControlNetModel (loaded with `GatedControlNet.from_pretrained`) that skips calls at scale 0. Set
    `skip_at_zero_scale = False` for diffusers' own behaviour (tests compare the two)."""

    skip_at_zero_scale = True

    def __call__(self, sample: torch.Tensor, *args: Any, conditioning_scale: Any = 1.0, guess_mode: bool = False,
                 **kwargs: Any) -> Any:
        if self.skip_at_zero_scale and isinstance(conditioning_scale, (int, float)) and conditioning_scale == 0:
            return self.zero_residuals(sample) if guess_mode else (None, None)
        return super().__call__(sample, *args, conditioning_scale=conditioning_scale, guess_mode=guess_mode,
                                **kwargs)

    def zero_residuals(self, sample: torch.Tensor) -> Residuals:
        """Zeros shaped like this ControlNet's residuals for `sample`: one per zero convolution, at the resolution
        of the down block it follows (each downsampler halves it, rounding up), and the mid block's."""
        batch, (height, width) = sample.shape[0], sample.shape[-2:]
        sizes = [(height, width)]
        for block in self.down_blocks:
            sizes += [(height, width)] * len(block.resnets)
            if block.downsamplers:
                height, width = (height + 1) // 2, (width + 1) // 2
                sizes.append((height, width))
        zeros = [sample.new_zeros(batch, conv.out_channels, h, w) for conv, (h, w)
                 in zip(self.controlnet_down_blocks, sizes, strict=True)]
        return zeros, sample.new_zeros(batch, self.controlnet_mid_block.out_channels, height, width)
