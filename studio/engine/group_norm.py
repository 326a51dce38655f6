"""GroupNorm that keeps channels-last activations channels-last, with statistics computed by all of the GPU.

PyTorch's CUDA GroupNorm first makes a channels-last input contiguous, computes each group's statistics in one
thread block (32 blocks for SD1.5's 32 groups: at batch 1 most of an H100 idles, and in the VAE at 512x512
each block reads a million values) and returns a contiguous output, which the next channels-last convolution
converts back. Profiled on an H200, a 6-step 512x512 run spent a third of its GPU time there. Here the
statistics are regular reductions over the NHWC view and the normalisation one fused multiply-add per element,
all in channels-last memory, computed in float32 as PyTorch's.

It takes a dozen small kernels where torch takes three, so it only pays on large activations: measured per
call in CUDA graphs on an H200 (benchmarks/group_norm_bench.py), torch's kernel wins up to SD's 64x64x320
(51 against 56 µs; 12 against 38 µs at 8x8x1280) and this one from 64x64x512 on (61 against 71 µs; 467 against
1375 µs at the VAE's 512x512x128). So the UNet and ControlNet keep torch's GroupNorm and the VAE decoder's
large layers take this one.
"""

from __future__ import annotations

from typing import Any

import torch

# Activations with fewer elements than this keep torch's GroupNorm (see above).
MIN_ELEMENTS = 2**21


def group_norm_nhwc(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                    eps: float) -> torch.Tensor:
    """`torch.nn.functional.group_norm` for a 4-d channels-last tensor; the result is channels-last too.

    Three passes over the activations: the sum and the sum of squares of each channel (float32), and
    `x * scale + shift` computed in float32 and rounded once into the output's dtype."""
    n, c, h, w = x.shape
    per_group = c // num_groups
    nhwc = x.permute(0, 2, 3, 1)  # contiguous for a channels-last x: a view
    pixels = nhwc.reshape(n, h * w, c)
    # per-channel sums over the pixels (one output per channel: the reduction spreads over the whole GPU),
    # then per group; float32 throughout
    sums = pixels.sum(dim=1, dtype=torch.float32).view(n, num_groups, per_group).sum(-1, keepdim=True)
    squares = torch.linalg.vector_norm(pixels, dim=1, dtype=torch.float32).square()
    squares = squares.view(n, num_groups, per_group).sum(-1, keepdim=True)
    count = h * w * per_group
    mean = sums / count
    var = (squares / count - mean.square()).clamp_(min=0)
    scale = torch.rsqrt(var + eps).expand(n, num_groups, per_group).reshape(n, 1, 1, c)
    if weight is not None:
        scale = scale * weight.float().view(1, 1, 1, c)
    shift = -mean.expand(n, num_groups, per_group).reshape(n, 1, 1, c) * scale
    if bias is not None:
        shift = shift + bias.float().view(1, 1, 1, c)
    out = torch.empty_like(nhwc)
    torch.addcmul(shift, nhwc, scale, out=out)
    return out.permute(0, 3, 1, 2)


class ChannelsLastGroupNorm:
    """Stands in for a `torch.nn.GroupNorm`'s forward: large channels-last 4-d CUDA input goes through
    `group_norm_nhwc`, anything else through the module's own forward."""

    def __init__(self, module: torch.nn.GroupNorm) -> None:
        self.module, self.native = module, module.forward

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        if x.dim() != 4 or x.device.type != "cuda" or x.numel() < MIN_ELEMENTS or x.shape[1] % m.num_groups \
                or not x.is_contiguous(memory_format=torch.channels_last):
            return self.native(x)
        return group_norm_nhwc(x, m.num_groups, m.weight, m.bias, m.eps)


def enable(*models: Any) -> int:
    """Every GroupNorm of `models` takes the channels-last path; returns how many."""
    count = 0
    for model in models:
        for module in model.modules():
            if isinstance(module, torch.nn.GroupNorm) and not isinstance(module.forward, ChannelsLastGroupNorm):
                module.forward = ChannelsLastGroupNorm(module)
                count += 1
    return count
