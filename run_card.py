"""The run card: everything needed to repeat a run, carried inside every PNG the app hands out."""

from __future__ import annotations

import io
import json
from importlib import metadata

from PIL import Image, PngImagePlugin

RUN_CARD_KEY = "run_card"
VERSIONED_PACKAGES = ("torch", "diffusers", "transformers", "ultralytics", "xformers", "flash-attn")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the pixels; missing ones are left out."""
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def png_with_run_card(image: Image.Image, card: dict) -> bytes:
    """PNG bytes of `image` with the run card as a JSON text chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text(RUN_CARD_KEY, json.dumps(card, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_run_card(png: bytes) -> dict:
    """The run card stored by `png_with_run_card`; KeyError when the PNG carries none."""
    with Image.open(io.BytesIO(png)) as image:
        return json.loads(image.text[RUN_CARD_KEY])
