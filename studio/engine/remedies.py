"""What the denoiser tries when the GPU runs out of memory, in order, each one added to the ones before it.

Each remedy is a small data entry: a label for the person, `apply` (which may decline: CPU offload means
nothing on the CPU) and `undo`. The smaller size is not a remedy of the weights: the run is prepared again at
0.75x the size (Canny of the placed photo at that size, guided as before), so its control image stays a true
edge map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SHRINK = 0.75


@dataclass(frozen=True)
class Remedy:
    label: str
    apply: Callable[[Any], bool]  # (denoiser) -> whether it was applied
    undo: Callable[[Any], None]


def _slicing(denoiser: Any) -> bool:
    denoiser.apply_attention("sliced")
    return True


def _tiling(denoiser: Any) -> bool:
    denoiser.pipe.vae.enable_tiling()
    return True


def _offload(denoiser: Any) -> bool:
    if not denoiser.device.startswith("cuda"):
        return False
    denoiser.pipe.enable_model_cpu_offload(device=denoiser.device)
    return True


def _onload(denoiser: Any) -> None:
    denoiser.pipe.remove_all_hooks()
    denoiser.pipe.to(denoiser.device)


REMEDIES = (
    Remedy("attention slicing", _slicing, lambda d: d.apply_attention(d.attention_in_use)),
    Remedy("VAE tiling", _tiling, lambda d: d.pipe.vae.disable_tiling()),
    Remedy("model CPU offload", _offload, _onload),
)


def smaller(size: tuple[int, int]) -> tuple[int, int]:
    """0.75x each side, snapped down to the VAE's multiple of 8 (at least 64)."""
    return tuple(max(64, int(side * SHRINK) // 8 * 8) for side in size)  # type: ignore[return-value]
