"""Regional prompts in one denoise: cross-attention per region, as A1111's Regional Prompter (attention mode) and
diffusers' community regional-prompting pipeline do it.

The prompt embeddings of every region are laid end to end (the main prompt first, then one per object, CLIP's 77
positions each) and handed to the UNet as one `encoder_hidden_states`. In every cross-attention layer,
`RegionalAttention` attends to each region's 77 positions apart and mixes the answers pixel by pixel with the
regions' masks scaled to that layer's resolution. SD1.5's layers take one SDPA call over a batch of regions with
the query and output projections computed once (77 keys: SDPA on every backend); any other layer goes through the
processor that was installed (the backend the run chose), once per region. The output projection is linear and
the weights of a pixel sum to 1, so a region's pixels get exactly its own prompt's attention, the main prompt's
where no region is. Self-attention and any call without `region_masks` go to the installed processor untouched.

The masks travel as `cross_attention_kwargs={"region_masks": ...}`, a tensor argument of the UNet's forward: the
CUDA graphs (cuda_graphs.py) capture a regional call like any other, with the masks among the copied inputs.
"""

from __future__ import annotations

import contextlib
import math
import weakref
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
        if shared_query_fits(attn, hidden_states, attention_mask):
            return shared_query(attn, hidden_states, prompts, weights)
        mixed = None
        for prompt, weight in zip(prompts, weights):
            answer = self.processor(attn, hidden_states, prompt, attention_mask, temb, **kwargs) * weight
            mixed = answer if mixed is None else mixed + answer
        return mixed


def shared_query_fits(attn: Any, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> bool:
    """SD1.5's cross-attention layers: tokens in, no norms or masks around the attention itself."""
    return (hidden_states.ndim == 3 and attention_mask is None and attn.group_norm is None
            and attn.spatial_norm is None and attn.norm_cross is None)


def shared_query(attn: Any, hidden_states: torch.Tensor, prompts: tuple[torch.Tensor, ...],
                 weights: torch.Tensor) -> torch.Tensor:
    """Every region's attention in one SDPA call over a batch of regions, with the query and the output projection
    computed once: the projections are linear and a pixel's weights sum to 1, so this is the installed processor's
    answer per region, mixed (the per-region calls cost a query and an output projection each)."""
    batch, regions = hidden_states.shape[0], len(prompts)
    query = attn.to_q(hidden_states)
    context = torch.cat(prompts, dim=0)  # region-major: region r's batch at rows r * batch ...
    key, value = attn.to_k(context), attn.to_v(context)
    head_dim = key.shape[-1] // attn.heads

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], -1, attn.heads, head_dim).transpose(1, 2)

    query, key = heads(query).repeat(regions, 1, 1, 1), heads(key)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    answer = F.scaled_dot_product_attention(query, key, heads(value), scale=attn.scale)
    answer = answer.transpose(1, 2).reshape(regions, batch, -1, attn.heads * head_dim)
    mixed = (answer * weights).sum(dim=0)
    mixed = attn.to_out[1](attn.to_out[0](mixed))
    if attn.residual_connection:
        mixed = mixed + hidden_states
    return mixed / attn.rescale_output_factor


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
    come back afterwards. The layers are swapped one by one: diffusers' `attn_processors` and `set_attn_processor`
    walk the UNet's whole module tree, twice a call (14 ms of a 0.24 s Fast repaint on an H200)."""
    kept = [(layer, layer.processor) for module in modules for layer in attention_layers(module)]
    try:
        for layer, processor in kept:
            layer.set_processor(RegionalAttention(processor))
        yield
    finally:
        for layer, processor in kept:
            layer.set_processor(processor)


_LAYERS: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


def attention_layers(module: Any) -> list[Any]:
    """The attention layers of `module`, as diffusers' `attn_processors` finds them (those with a processor),
    found once per module."""
    if module not in _LAYERS:
        _LAYERS[module] = [layer for layer in module.modules() if hasattr(layer, "get_processor")]
    return _LAYERS[module]
