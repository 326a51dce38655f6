"""The ControlNet's conditioning embedding once per control image, not once per step.

diffusers' `ControlNetModel.forward` starts every call with `self.controlnet_cond_embedding(controlnet_cond)`:
eight convolutions over the control image at its full pixel size, the only part of a ControlNet that works there.
The pipeline hands it the same control tensor at every step, so each step after the first computes the same
embedding again: on the CPU a third of the tiny test models' ControlNet time, a few per cent of SD1.5's.

`EmbeddingPerImage` answers a call whose input is the previous call's tensor (the same object, not changed in
place since: its version counter says so) with the output it kept. It computes as diffusers does wherever a kept
answer could outlive the call: inside a CUDA-graph capture (a replay runs no Python, so it would replay this
image's embedding for every later one), inside a torch.compile trace, with autograd on, and on an inference
tensor (it has no version counter). The kept output is dropped with its input tensor, so nothing outlives a run.
"""

from __future__ import annotations

import weakref

import torch
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding


class EmbeddingPerImage(ControlNetConditioningEmbedding):
    """diffusers' conditioning embedding that reuses its last output for the same input tensor. Set
    `reuse = False` for diffusers' own behaviour (tests compare the two)."""

    reuse = True
    _kept: tuple[weakref.ref, int, torch.Tensor] | None = None

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        if not self._may_keep(conditioning):
            self._kept = None
            return super().forward(conditioning)
        kept = self._kept
        if kept is not None and kept[0]() is conditioning and kept[1] == conditioning._version:
            return kept[2]
        embedding = super().forward(conditioning)
        self._kept = (weakref.ref(conditioning, self._forget), conditioning._version, embedding)
        return embedding

    def _may_keep(self, conditioning: torch.Tensor) -> bool:
        return (self.reuse and not torch.is_grad_enabled() and not conditioning.is_inference()
                and not torch.compiler.is_compiling()
                and not (conditioning.is_cuda and torch.cuda.is_current_stream_capturing()))

    def _forget(self, _: weakref.ref) -> None:
        """The input tensor is gone (its run ended): so is the embedding kept for it."""
        self._kept = None


def embed_once_per_image(controlnet: torch.nn.Module) -> None:
    """Make `controlnet`'s conditioning embedding an `EmbeddingPerImage`, weights untouched: the subclass adds
    behaviour only, so the loaded module changes class in place."""
    embedding = controlnet.controlnet_cond_embedding
    if type(embedding) is not ControlNetConditioningEmbedding:
        raise TypeError(f"expected diffusers' ControlNetConditioningEmbedding, got {type(embedding).__name__}")
    embedding.__class__ = EmbeddingPerImage
