import io

import pytest
from PIL import Image

from image_io import InvalidImageError, load_image


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"hello, this is not a picture", "not an image"),
    (b"<html><body>hi</body></html>", "not an image"),
])
def test_garbage_is_rejected_with_a_message(data, message):
    with pytest.raises(InvalidImageError, match=message):
        load_image(data)


def test_truncated_png_is_rejected():
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"))
    with pytest.raises(InvalidImageError, match="damaged or truncated"):
        load_image(data[: len(data) // 2])


def test_tiny_and_huge_images_are_rejected():
    with pytest.raises(InvalidImageError, match="at least"):
        load_image(encode(Image.new("RGB", (1, 1))))
    with pytest.raises(InvalidImageError, match="more than"):
        load_image(encode(Image.new("L", (300, 300))), max_pixels=10_000)


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    loaded = load_image(encode(image, "JPEG", exif=exif))
    assert loaded.size == (20, 40)


def test_alpha_is_flattened_on_white_and_modes_become_rgb(tmp_path):
    transparent = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    assert load_image(encode(transparent)).getpixel((5, 5)) == (255, 255, 255)
    gray = tmp_path / "gray.png"
    Image.new("L", (32, 32), 128).save(gray)
    loaded = load_image(gray)
    assert loaded.mode == "RGB" and loaded.getpixel((0, 0)) == (128, 128, 128)
