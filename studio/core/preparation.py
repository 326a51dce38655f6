"""From a photo, its detections and a request to what the denoiser needs: the photo at the output size, the
control image and, when only part of the picture is repainted, the repaint passes (repaint_plan.py) and their
mask. Pure image work (numpy, OpenCV, Pillow): milliseconds, so the page rebuilds it live while sliders move,
and the out-of-memory remedy rebuilds it at a smaller size.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from studio.core.control_image import REGENERATE_MODES, place_image
from studio.core.detections import Detection, with_ids
from studio.core.repaint_plan import RepaintPass, control_for, plan, select, union
from studio.core.request import GenerationRequest
from studio.core.sizes import output_size


@dataclass(frozen=True)
class ControlPreview:
    """What a request makes of a photo before any denoising: `picture` (the photo at the output size), the
    `detections` (in the photo's own pixels, with their ids), the `control_image`, the repaint `passes` and
    their `mask` ("L", 255: repainted; None when everything is generated), warnings for the person, and the
    `selected` objects (in the picture's pixels) that guide the control image and the passes."""

    picture: Image.Image
    detections: list[Detection]
    control_image: Image.Image
    mask: Image.Image | None = None
    warnings: list[str] = field(default_factory=list)
    passes: list[RepaintPass] = field(default_factory=list)
    selected: list[Detection] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.control_image.size


def only_inside(control: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """The control image with nothing outside `box`: the area "Resize and fill" filled has no edges of its own,
    as in A1111."""
    kept = Image.new(control.mode, control.size, 0)
    kept.paste(control.crop(box), box[:2])
    return kept


def prepare(image: Image.Image, detections: list[Detection], request: GenerationRequest, max_side: int,
            size: tuple[int, int] | None = None) -> ControlPreview:
    """The control image (Canny at the output size, so every edge lands on an output pixel) and the repaint
    passes; `size` overrides the request's output size (the out-of-memory remedy). Raises InvalidRequestError
    when the output would be too large."""
    size = size or output_size(image.size, request.resolution, request.width, request.height, max_side)
    picture, placement = place_image(image, size, request.resize_mode)
    detections = with_ids(detections)
    placed = [replace(d, box=placement.map_box(d.box), polygon=placement.map_polygon(d.polygon)) for d in detections]
    selected = select(placed, request, size)
    control, warnings = control_for(picture, selected, request)
    if request.resize_mode == "fill":
        control = only_inside(control, placement.inner)
    warnings += near_empty(control, request)
    passes = plan(picture, selected, request, control, max_side)
    if request.regenerate != "all" and not passes:
        warnings.append("No detected object matches the chosen objects or classes, so there is nothing to tell apart "
                        f"for '{REGENERATE_MODES[request.regenerate]}'. The whole picture is repainted instead.")
    mask = union([p.mask for p in passes]) if passes else None
    return ControlPreview(picture, detections, control, mask, warnings, passes, selected)


NEAR_EMPTY_EDGES = 0.005  # a photo's Canny map has 5-15% edge pixels; under 0.5% ControlNet has little to follow
def near_empty(control: Image.Image, request: GenerationRequest) -> list[str]:
    """A warning when the whole photo's Canny map has almost no edges (a tiny, blurred or flat photo)."""
    if request.control_source != "canny" or request.control_mode != "full":
        return []
    share = float(np.count_nonzero(np.asarray(control.convert("L")) > 127)) / (control.width * control.height)
    if share >= NEAR_EMPTY_EDGES:
        return []
    return [f"The control image is nearly empty: {share:.1%} of its pixels are edges, so ControlNet has little to "
            "follow. Lower the Canny thresholds (Control image settings) or use a larger, sharper photo."]


KEEP_SLACK = 2.0  # a waiting job keeps its photo at up to twice the output's width and height


def scaled(detection: Detection, factor: float) -> Detection:
    polygon = tuple((x * factor, y * factor) for x, y in detection.polygon) if detection.polygon else None
    return replace(detection, box=tuple(v * factor for v in detection.box), polygon=polygon)  # type: ignore[arg-type]


def bounded_input(image: Image.Image, request: GenerationRequest, max_side: int,
                  detections: list[Detection] | None = None, preview: ControlPreview | None = None
                  ) -> tuple[Image.Image, list[Detection] | None, ControlPreview | None]:
    """The photo a job keeps while it waits: at most KEEP_SLACK times what its output needs on each side, with its
    detections scaled along (a decoded 6300x6300 upload holds 119 MB; a 512x512 output needs a 1 MB picture). A
    preview's picture, control image and passes are already at the output size; only its detections follow."""
    size = output_size(image.size, request.resolution, request.width, request.height, max_side)
    factor = max(size[0] / image.width, size[1] / image.height) * KEEP_SLACK
    if factor >= 1:
        return image, detections, preview
    smaller = image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))),
                           Image.Resampling.LANCZOS)
    factor = smaller.width / image.width
    if detections is not None:
        detections = [scaled(d, factor) for d in detections]
    if preview is not None:
        preview = replace(preview, detections=[scaled(d, factor) for d in preview.detections])
    return smaller, detections, preview
