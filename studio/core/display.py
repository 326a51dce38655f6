"""Pictures as the page shows them: small files for a metered tunnel.

ngrok's free plan carries 1 GB a month. Handed a PIL image, Streamlit sends a JPEG at quality 100 (about 250 KB for
a 512x512 result) or a PNG; the page shows pictures at most about 700 px wide. So the page gets JPEGs at display
size (about 40 KB at 512 px) and edge maps as grey PNGs (a few KB); the full PNG, with its text chunks, leaves the
server only when a visitor downloads it. (Give `st.image` an edge map with `output_format="PNG"`: told "auto", it
re-encodes any PNG without transparency as a JPEG at quality 90, about 190 KB for a busy edge map.)
"""

from __future__ import annotations

from PIL import Image

from studio.core.image_io import encoded_image

DISPLAY_SIDE = 640  # the page's columns are at most about 700 px wide on a 1440 px screen
PREVIEW_SIDE = 256  # live previews: one every few steps
QUALITY = 75


def photo(image: Image.Image, max_side: int = DISPLAY_SIDE, quality: int = QUALITY) -> bytes:
    """A JPEG no larger than `max_side` on its long side."""
    picture = image.convert("RGB")
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return encoded_image(picture, "JPEG", quality=quality, optimize=True)


def edges(image: Image.Image, max_side: int = DISPLAY_SIDE) -> bytes:
    """An edge map (white lines on black) as a grey PNG: exact lines in a few KB, where a JPEG would blur them."""
    picture = image.convert("L")
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.NEAREST)
    return encoded_image(picture, "PNG", optimize=True)
