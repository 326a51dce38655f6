"""Regional prompts in one denoise: cross-attention per region, as A1111's Regional Prompter (attention mode) and
diffusers' community regional-prompting pipeline do it.

The prompt embeddings of every region are laid end to end (the main prompt first, then one per object, CLIP's 77
positions each) and handed to the UNet as one `encoder_hidden_states`. In every cross-attention layer,
`RegionalAttention` attends to each region's 77 positions apart, through the processor that was installed (SDPA,
xformers, flash-attn, sliced: the backend the run chose), and mixes the answers pixel by pixel with the regions'
masks scaled to that layer's resolution. The output projection is linear and the weights of a pixel sum to 1, so a
region's pixels get exactly its own prompt's attention, the main prompt's where no region is. Self-attention and any
call without `region_masks` go to the installed processor untouched.

The masks travel as `cross_attention_kwargs={"region_masks": ...}`, a tensor argument of the UNet's forward: the
CUDA graphs (cuda_graphs.py) capture a regional call like any other, with the masks among the copied inputs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

CLIP_POSITIONS = 77


class RegionalAttention:
    """Wraps one attention layer's processor; regional only when the call brings `region_masks`."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 region_masks: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if region_masks is None or encoder_hidden_states is None:
            return self.processor(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        prompts = encoder_hidden_states.split(CLIP_POSITIONS, dim=1)
        weights = region_weights(region_masks, hidden_states.shape[1]).to(hidden_states.dtype)
        mixed = None
        for prompt, weight in zip(prompts, weights):
            answer = self.processor(attn, hidden_states, prompt, attention_mask, temb, **kwargs) * weight
            mixed = answer if mixed is None else mixed + answer
        return mixed


def region_weights(masks: torch.Tensor, positions: int) -> torch.Tensor:
    """`masks` (regions x height x width, at the latents' size) at the resolution of a layer with `positions`
    pixels (the UNet halves each side, rounding up, at every level), as (regions x 1 x positions x 1) weights
    that sum to 1 at every pixel."""
    height, width = masks.shape[-2:]
    for level in range(8):
        size = (math.ceil(height / 2**level), math.ceil(width / 2**level))
        if size[0] * size[1] == positions:
            break
    else:
        raise ValueError(f"no UNet level of a {height}x{width} latent has {positions} positions")
    scaled = F.interpolate(masks[None].float(), size=size, mode="area")[0] if level else masks.float()
    scaled = scaled / scaled.sum(dim=0, keepdim=True).clamp_min(1e-6)
    return scaled.reshape(len(masks), 1, positions, 1)


@contextlib.contextmanager
def regional(*modules: Any) -> Iterator[None]:
    """Every attention layer of `modules` (UNets, ControlNets) regional for the duration; the processors they had
    come back afterwards."""
    kept = [(module, module.attn_processors) for module in modules]
    try:
        for module, processors in kept:
            module.set_attn_processor({name: RegionalAttention(p) for name, p in processors.items()})
        yield
    finally:
        for module, processors in kept:
            module.set_attn_processor(processors)
