"""load_image over a corpus of bad and odd files made here, each with its expected outcome, within a second."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from studio.core.image_io import InvalidImageError, load_image


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size in its header and carries no pixels: what a decompression bomb looks like
    before it is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def noise(size=(64, 48)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (32, 32), color) for color in ((255, 0, 0), (0, 0, 255))]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def palette_with_transparency() -> bytes:
    image = Image.new("P", (32, 32), 0)
    image.putpalette([0, 255, 0] + [0, 0, 0] * 255)
    return encode(image, transparency=0)


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    return encode(Image.new("RGB", (40, 20), "red"), "JPEG", exif=exif)


REJECTED = {
    "empty file": (b"", "empty"),
    "text renamed .png": (b"hello, these are my notes", "not an image"),
    "html renamed .jpg": (b"<!doctype html><html><body>hi</body></html>", "not an image"),
    "svg renamed .png": (b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" '
                         b'height="64"/></svg>', "not an image"),
    "truncated png": (encode(noise())[:300], "damaged or truncated"),
    "truncated jpeg": (encode(noise(), "JPEG")[:400], "damaged or truncated"),
    "decompression bomb": (png_header_only(100_000, 100_000), "far too large"),
    "huge dimensions": (png_header_only(9_000, 9_000), "more than the 40,000,000 allowed"),
    "1x1 image": (encode(Image.new("RGB", (1, 1))), "at least 16"),
    # extreme aspect ratios, both ways, at the pixel limit (header only) and under it (real pixels)
    "16x2500000 strip, at MAX_PIXELS": (png_header_only(16, 2_500_000), "times longer than wide"),
    "2500000x16 strip, at MAX_PIXELS": (png_header_only(2_500_000, 16), "times longer than wide"),
    "16x20000 strip": (encode(Image.new("RGB", (16, 20_000))), "times longer than wide"),
    "20000x16 strip": (encode(Image.new("RGB", (20_000, 16))), "times longer than wide"),
    # formats Pillow could decode but the uploader does not offer, renamed as if they were
    "tiff renamed .png": (encode(Image.new("RGB", (32, 32)), "TIFF"), "PNG, JPEG, WebP or GIF"),
    "ico renamed .png": (encode(Image.new("RGB", (32, 32)), "ICO"), "PNG, JPEG, WebP or GIF"),
    "bmp renamed .jpg": (encode(Image.new("RGB", (32, 32)), "BMP"), "PNG, JPEG, WebP or GIF"),
    "tga renamed .webp": (encode(Image.new("RGB", (32, 32)), "TGA"), "PNG, JPEG, WebP or GIF"),
}

ACCEPTED = {
    "cmyk jpeg": (encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"), (40, 30),
                  lambda px: px[0] > 200 and px[1] < 60 and px[2] < 60),
    "16-bit grayscale png": (encode(Image.fromarray(np.full((24, 20), 32768, np.uint16))), (20, 24),
                             lambda px: px == (128, 128, 128)),
    "palette png": (encode(Image.new("RGB", (30, 30), (10, 120, 200)).quantize(8)), (30, 30),
                    lambda px: abs(px[0] - 10) < 8 and abs(px[2] - 200) < 8),
    "palette png with transparency": (palette_with_transparency(), (32, 32), lambda px: px == (255, 255, 255)),
    "half-transparent rgba": (encode(Image.new("RGBA", (32, 32), (255, 0, 0, 128))), (32, 32),
                              lambda px: px[0] == 255 and 120 <= px[1] <= 135),
    "grayscale": (encode(Image.new("L", (32, 32), 77)), (32, 32), lambda px: px == (77, 77, 77)),
    "exif-rotated jpeg": (exif_rotated(), (20, 40), lambda px: px[0] > 200),
    "animated gif": (animated("GIF"), (32, 32), lambda px: px[0] > 200 and px[2] < 50),
    "animated webp": (animated("WEBP"), (32, 32), lambda px: px[0] > 200 and px[2] < 50),
}


@pytest.mark.parametrize("name", REJECTED)
def test_bad_files_are_rejected_with_a_message_before_their_pixels_are_decoded(name, decoded):
    data, message = REJECTED[name]
    with pytest.raises(InvalidImageError, match=message):
        load_image(data)
    assert len(decoded) == (1 if name == "truncated png" else 0), decoded  # only a cut-off stream is tried, once


@pytest.mark.parametrize("name", ACCEPTED)
def test_odd_files_become_rgb_images_decoded_once(name, decoded):
    data, size, pixel_ok = ACCEPTED[name]
    image = load_image(data)
    assert len(decoded) == 1, decoded  # one frame (the first of an animation), decoded once
    assert image.mode == "RGB" and image.size == size
    pixel = image.getpixel((image.width // 2, image.height // 2))
    assert pixel_ok(pixel), pixel


def test_paths_and_pil_images_are_accepted_too(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("L", (32, 32), 128).save(path)
    assert load_image(path).getpixel((0, 0)) == (128, 128, 128)
    assert load_image(Image.new("RGBA", (20, 20), (0, 0, 0, 0))).getpixel((3, 3)) == (255, 255, 255)


def test_the_pixel_limit_is_a_setting():
    with pytest.raises(InvalidImageError, match="more than the 10,000 allowed"):
        load_image(encode(Image.new("L", (300, 300))), max_pixels=10_000)


def test_loading_never_touches_the_process_wide_warning_filters():
    """Several threads decode uploads at once; `warnings.catch_warnings` would swap the one global filter list
    under all of them."""
    import warnings

    buffer = io.BytesIO()
    Image.new("RGB", (8, 12000), "white").save(buffer, format="PNG")  # refused: too long for its width
    filters = list(warnings.filters)
    for data in (buffer.getvalue(), b"not a picture"):
        with pytest.raises(InvalidImageError):
            load_image(data)
    assert warnings.filters == filters
