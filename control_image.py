"""Control images for ControlNet Canny: output geometry and edge maps. Pure numpy/OpenCV, no torch."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image


def fit_size(width: int, height: int, short_side: int, multiple: int = 8) -> tuple[int, int]:
    """The output size: the short side becomes `short_side`, the aspect ratio is kept, and both sides
    are snapped to a multiple of `multiple` (the VAE needs 8; 64 keeps SD1.5 in its comfort zone)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    scale = short_side / min(width, height)

    def snap(side: float) -> int:
        return max(multiple, int(round(side / multiple)) * multiple)

    return snap(width * scale), snap(height * scale)


def canny_edges(image: Image.Image, low: int = 100, high: int = 200) -> np.ndarray:
    """A uint8 HxW edge map (0 or 255) of `image`, with the same thresholds as the ControlNet demo."""
    if not 1 <= low <= 255 or not 1 <= high <= 255:
        raise ValueError(f"Canny thresholds must lie in 1..255, got {low} and {high}")
    gray = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)
    return cv2.Canny(gray, low, high)


def build_control_image(image: Image.Image, size: tuple[int, int], low: int = 100, high: int = 200) -> Image.Image:
    """The RGB Canny map that ControlNet Canny expects, computed at the output size so that every
    edge lands on an output pixel."""
    resized = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    edges = canny_edges(resized, low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))
