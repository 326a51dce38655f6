"""LoRAs fused into the weights: the distillation LoRA of a fast preset and a style LoRA cost nothing per step.

Left as PEFT adapters, a rank-64 LoRA over every attention, feed-forward and ResNet layer adds a thousand small
kernels to each UNet evaluation: measured on an H200 with CUDA graphs, a 6-step LCM run took 17.5 ms per step
instead of 7. So the active set is loaded, weighted, fused into the UNet's and the text encoder's weights
(`fuse_lora`), and its adapter layers removed (`unload_lora_weights`), leaving plain layers. Fusing in fp16
cannot be undone exactly by subtracting, so the base weights are copied to host memory at the first fusion
and copied back, bit for bit (only where the set changed them), before the next set is fused.

Loading and fusing a set through PEFT takes most of a second of Python, so the weights each of the last
CACHED_SETS sets changed are kept too: switching back to a preset already used is two copies. On a GPU these
host copies are pinned (page-locked), so a copy runs at the full speed of the bus (preset switches measured on
an H200: README, Speed presets). Every write lands in the weights' own memory, so the captured CUDA graphs stay
valid.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

COMPONENTS = ("unet", "text_encoder")
CACHED_SETS = 2  # fused sets kept in host memory: the Fast and Turbo presets' (a distillation LoRA is ~1.6 GB)


class LoraLoadFailed(Exception):
    """One LoRA of the set could not be loaded or fused; the base weights are back in place."""

    def __init__(self, adapter: str, source: str, cause: BaseException) -> None:
        super().__init__(f"{adapter}: {cause}")
        self.adapter, self.source, self.cause = adapter, source, cause


def host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A copy in host memory, pinned when the tensor lives on a GPU (so that copying it back is one fast DMA)."""
    copy = tensor.detach().to("cpu", copy=True)
    return copy.pin_memory() if tensor.is_cuda else copy


Weights = dict[str, dict[str, torch.Tensor]]  # component -> state-dict key -> tensor


class FusedLoras:
    """Which LoRAs are fused into a pipeline's weights, the base weights to return to, and the weights of the
    last CACHED_SETS fused sets (only what each changes), so that switching back to a preset is a copy."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.active: dict[str, tuple[str, float]] = {}  # adapter name -> (source, weight)
        self._base: Weights | None = None
        self._fused: OrderedDict[tuple, Weights] = OrderedDict()

    def set(self, wanted: dict[str, tuple[str, float]], load: Callable[[str, str], None]) -> None:
        """Fuse exactly `wanted` ({adapter: (source, weight)}); `load(source, adapter)` loads one adapter.
        Raises LoraLoadFailed (with the base weights restored) when one of them does not fit."""
        if wanted == self.active:
            return
        if self.active:
            self._write(self._base, self._fused[self._key(self.active)])  # the base, where the set changed it
            self.active = {}
        if not wanted:
            return
        if self._base is None:
            self._base = {name: {key: host_copy(value) for key, value in getattr(self.pipe, name).state_dict().items()}
                          for name in COMPONENTS}
        key = self._key(wanted)
        if key not in self._fused:
            self._fused[key] = self._fuse(wanted, load)
            while len(self._fused) > CACHED_SETS:
                self._fused.popitem(last=False)
        else:
            self._write(self._fused[key], self._fused[key])
        self._fused.move_to_end(key)
        self.active = dict(wanted)

    @staticmethod
    def _key(wanted: dict[str, tuple[str, float]]) -> tuple:
        return tuple(sorted(wanted.items()))

    def _fuse(self, wanted: dict[str, tuple[str, float]], load: Callable[[str, str], None]) -> Weights:
        """Load, weight and fuse the set with diffusers; returns host copies of the weights it changed."""
        adapter = source = ""
        try:
            for adapter, (source, _) in wanted.items():
                load(source, adapter)
            adapter = source = ""
            # the layers the adapters wrap: their base weights are the ones fusing changes
            changed = {name: {key.replace(".base_layer", "") for key, _ in getattr(self.pipe, name).named_parameters()
                              if ".base_layer." in key} for name in COMPONENTS}
            self.pipe.set_adapters(list(wanted), adapter_weights=[weight for _, weight in wanted.values()])
            self.pipe.fuse_lora(components=list(COMPONENTS), adapter_names=list(wanted), lora_scale=1.0)
        except Exception as exc:
            self.pipe.unload_lora_weights()
            self._write(self._base, self._base)
            raise LoraLoadFailed(adapter, source, exc) from exc
        self.pipe.unload_lora_weights()  # the adapter layers go, the fused weights stay
        return {name: {key: host_copy(value) for key, value in getattr(self.pipe, name).state_dict().items()
                       if key in changed[name]} for name in COMPONENTS}

    @torch.no_grad()
    def _write(self, source: Weights | None, which: Weights) -> None:
        """Copy `source`'s tensors into the weights, for the keys `which` holds (in place: graphs stay valid)."""
        assert source is not None
        for name, keys in which.items():
            state = getattr(self.pipe, name).state_dict()
            for key in keys:
                state[key].copy_(source[name][key], non_blocking=True)  # ordered on the stream: kernels see it
