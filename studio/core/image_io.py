"""Turning whatever a person uploads into an RGB image the pipeline can use, or a message saying why not."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from studio.core.errors import InvalidImageError

MIN_SIDE = 16
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_ASPECT = 8.0
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# Only what the uploader offers: Pillow would decode dozens of formats (TIFF, ICO, EPS through Ghostscript, …),
# each an attack surface that a photo upload never needs.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
UNREADABLE = "This file is not an image that can be read (PNG, JPEG, WebP or GIF)."


def load_image(source: bytes | str | Path | Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_aspect: float = DEFAULT_MAX_ASPECT) -> Image.Image:
    """An RGB image: EXIF orientation applied, transparency flattened on white, 16-bit scaled to 8-bit, the
    first frame of an animation.

    The size and the aspect ratio are checked from the header before any pixel is decoded, so a decompression
    bomb or a 16x2,500,000 strip costs nothing.
    """
    if isinstance(source, Image.Image):
        image = source
    else:
        data = Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
        if not data:
            raise InvalidImageError("The file is empty.")
        try:  # Pillow warns above its own limit and refuses above twice that; ours is checked right after
            image = Image.open(io.BytesIO(data), formats=FORMATS)
        except Image.DecompressionBombError:
            raise InvalidImageError("The image is far too large to open safely; please downscale it.") from None
        # Ultralytics patches Image.open to load a HEIF plugin on unknown files; without it, ImportError.
        except (UnidentifiedImageError, ImportError):
            raise InvalidImageError(UNREADABLE) from None
        except (OSError, SyntaxError, ValueError) as exc:  # a header cut short
            raise InvalidImageError(f"The image file is damaged or truncated ({exc}).") from None
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidImageError(
            f"The image is {width}x{height} pixels, more than the {max_pixels:,} allowed; please downscale it.")
    if min(width, height) < MIN_SIDE:
        raise InvalidImageError(f"The image is {width}x{height} pixels; it needs at least {MIN_SIDE} on each side.")
    if max(width, height) > max_aspect * min(width, height):
        raise InvalidImageError(f"The image is {width}x{height} pixels, {max(width, height) / min(width, height):.0f} "
                                f"times longer than wide; at most {max_aspect:g}:1 is supported. Crop it first.")
    try:
        image.seek(0)
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImageError(f"The image file is damaged or truncated ({exc}).") from None
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in SIXTEEN_BIT_MODES:
        levels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "I" or levels.max() > 255 else 255.0
        gray = np.clip(np.round(levels / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def encoded_image(image: Image.Image, format: str, **params: Any) -> bytes:
    """`image` encoded as `format` with `params`, safe for an image that several threads hold (a job's photo, a
    cached upload, a result that the API and the outputs folder encode at once). Pillow's `save` keeps its
    parameters on the image object while it encodes and puts the earlier ones back when it returns, so a second
    save of the same object that is still encoding loses its own: a lossless WebP comes out lossy at quality 80,
    and a PNG loses its text chunks. A private copy for each save (0.02 ms for a 512x512 photo on the 2-core
    machine) avoids that."""
    buffer = io.BytesIO()
    image.copy().save(buffer, format=format, **params)
    return buffer.getvalue()
