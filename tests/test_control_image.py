import numpy as np
import pytest
from PIL import Image

from control_image import build_control_image, canny_edges, fit_size


@pytest.mark.parametrize("size, short, multiple, expected", [
    ((512, 512), 512, 8, (512, 512)),
    ((1000, 500), 512, 64, (1024, 512)),
    ((480, 640), 512, 8, (512, 680)),
    ((3000, 2000), 768, 64, (1152, 768)),
    ((80, 96), 64, 8, (64, 80)),
])
def test_fit_size_keeps_aspect_and_snaps(size, short, multiple, expected):
    assert fit_size(*size, short, multiple) == expected


def test_fit_size_rejects_empty_images():
    with pytest.raises(ValueError):
        fit_size(0, 10, 512)


def test_canny_finds_the_square_and_nothing_else():
    canvas = np.zeros((64, 64, 3), np.uint8)
    canvas[16:48, 16:48] = 255
    edges = canny_edges(Image.fromarray(canvas))
    assert set(np.unique(edges)) == {0, 255}
    ys, xs = np.nonzero(edges)
    assert 14 <= xs.min() and xs.max() <= 49 and 14 <= ys.min() and ys.max() <= 49
    assert edges[32, 32] == 0 and edges[2, 2] == 0


def test_control_image_is_rgb_at_the_output_size():
    canvas = np.zeros((100, 200, 3), np.uint8)
    canvas[:, 100:] = 255
    control = build_control_image(Image.fromarray(canvas), (128, 64))
    assert control.mode == "RGB" and control.size == (128, 64)
    array = np.asarray(control)
    assert np.array_equal(array[..., 0], array[..., 1])
    assert array[:, 62:66].max() == 255 and array[:, :50].max() == 0


def test_thresholds_out_of_range_are_refused():
    with pytest.raises(ValueError, match="1..255"):
        canny_edges(Image.new("RGB", (8, 8)), 0, 200)
