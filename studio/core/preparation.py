"""From a photo, its detections and a request to what the denoiser needs: the photo at the output size, the
control image and, when only part of the picture is repainted, the repaint mask. Pure image work (numpy, OpenCV,
Pillow): milliseconds, so the page rebuilds it live while sliders move, and the out-of-memory remedy rebuilds it
at a smaller size.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from studio.core.control_image import (NoMatchingDetectionsError, build_control_image, edge_map_control,
                                       place_image, repaint_mask)
from studio.core.detections import Detection
from studio.core.request import GenerationRequest
from studio.core.sizes import output_size


@dataclass(frozen=True)
class Repaint:
    """A regeneration of part of the picture: the input at the output size, and the mask of what is repainted
    ("L", 255: repainted, 0: kept exactly, in between: blended)."""

    image: Image.Image
    mask: Image.Image

    def composite(self, generated: Image.Image) -> Image.Image:
        """The generated picture inside the mask, the input outside it, pixel for pixel."""
        weight = np.asarray(self.mask, np.float32)[..., None] / 255.0
        blended = np.asarray(self.image, np.float32) * (1.0 - weight) + np.asarray(generated, np.float32) * weight
        return Image.fromarray(np.round(blended).astype(np.uint8))


@dataclass(frozen=True)
class ControlPreview:
    """What a request makes of a photo before any denoising: `picture` (the photo at the output size), the
    `detections` (in the photo's own pixels), the `control_image`, the repaint `mask` ("L", 255: repainted; None
    when everything is repainted) and warnings for the person."""

    picture: Image.Image
    detections: list[Detection]
    control_image: Image.Image
    mask: Image.Image | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.control_image.size

    @property
    def repaint(self) -> Repaint | None:
        return Repaint(self.picture, self.mask) if self.mask is not None else None


def prepare(image: Image.Image, detections: list[Detection], request: GenerationRequest, max_side: int,
            size: tuple[int, int] | None = None) -> ControlPreview:
    """The control image (Canny at the output size, so every edge lands on an output pixel) and the repaint
    mask; `size` overrides the request's output size (the out-of-memory remedy). Raises InvalidRequestError
    when the output would be too large."""
    size = size or output_size(image.size, request.resolution, request.width, request.height, max_side)
    picture, placement = place_image(image, size, request.resize_mode)
    placed = [replace(d, box=placement.map_box(d.box), polygon=placement.map_polygon(d.polygon)) for d in detections]
    control, warnings = _control(picture, placed, request)
    mask = None
    if request.regenerate != "all":
        try:
            region = repaint_mask(size, placed, request.regenerate, request.control_classes, request.control_padding,
                                  request.control_feather)
            mask = Image.fromarray(np.round(region * 255).astype(np.uint8), "L")
        except NoMatchingDetectionsError as exc:
            warnings.append(f"{exc} The whole picture is repainted instead.")
    return ControlPreview(picture, list(detections), control, mask, warnings)


def _control(picture: Image.Image, placed: list[Detection], request: GenerationRequest
             ) -> tuple[Image.Image, list[str]]:
    if request.control_source == "edge_map":
        return edge_map_control(picture, request.invert_edge_map), []
    options = dict(low=request.canny_low, high=request.canny_high, classes=request.control_classes,
                   padding=request.control_padding, feather=request.control_feather,
                   background_weight=request.background_weight)
    try:
        return build_control_image(picture, placed, mode=request.control_mode, **options), []
    except NoMatchingDetectionsError as exc:
        return build_control_image(picture, mode="full", **options), [f"{exc} The whole image's edges are used "
                                                                      "instead."]
