"""The one size rule: how large an output is for a given input and request. The page's preview, the Python API
and the job queue all call `output_size`, so they cannot disagree."""

from __future__ import annotations

from studio.core.errors import InvalidRequestError

MULTIPLE = 8  # the VAE's scale factor; A1111 snaps sizes to 8 as well


def fit_size(width: int, height: int, short_side: int, multiple: int = MULTIPLE) -> tuple[int, int]:
    """The short side becomes `short_side`, the aspect ratio is kept, both sides snap to `multiple`."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    scale = short_side / min(width, height)

    def snap(side: float) -> int:
        return max(multiple, int(round(side / multiple)) * multiple)

    return snap(width * scale), snap(height * scale)


def output_size(image_size: tuple[int, int], resolution: int, width: int | None, height: int | None,
                max_side: int) -> tuple[int, int]:
    """Width and height when given, else the input's aspect ratio at `resolution` (short side). Raises
    InvalidRequestError, with what to do, when the long side would pass `max_side`."""
    size = (width, height) if width and height else fit_size(*image_size, resolution)
    if max(size) > max_side:
        raise InvalidRequestError(f"The output would be {size[0]}x{size[1]} pixels; its long side may be at most "
                                  f"{max_side}. Choose a lower resolution, or crop the photo.")
    return size
