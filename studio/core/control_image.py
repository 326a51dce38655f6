"""Control images for ControlNet Canny, optionally guided by detections, the masks of what to repaint, and how
well an output followed a control image.

Pure numpy/OpenCV, no torch: every function here is tested on synthetic pictures with known geometry.
Boxes are (x1, y1, x2, y2) and polygons (x, y) points, in pixels of the image they are given with. A detection's
region is its polygon (a segmentation model's mask) or else its box, grown by OUTLINE_PX: a box edge or a mask
border lies on the object's own edge, and Canny's edge pixels there fall on either side of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

# Each choice with the label the page shows for it.
CONTROL_MODES = {"full": "Whole image", "objects": "Only the chosen objects", "background": "Only the background",
                 "outlines": "Objects' edges and outlines"}
RESIZE_MODES = {"resize": "Just resize", "crop": "Crop and resize", "fill": "Resize and fill"}
REGENERATE_MODES = {"all": "Everything", "objects": "Only the chosen objects",
                    "background": "Everything but the chosen objects",
                    "detail": "Each chosen object in detail, at its own resolution"}
Box = tuple[float, float, float, float]
Polygon = tuple[tuple[float, float], ...]
OUTLINE_PX = 3


class NoMatchingDetectionsError(ValueError):
    """A detection-guided mode found no detection of the chosen classes; the message says so."""


@dataclass(frozen=True)
class Placement:
    """Where the input landed in the output: output = input * scale + offset, per axis."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    size: tuple[int, int]

    content: tuple[int, int, int, int] | None = None  # where the input itself lies, when it was filled around

    @property
    def inner(self) -> tuple[int, int, int, int]:
        """Where the input itself lies in the output (x1, y1, x2, y2): the whole frame unless it was filled."""
        return self.content or (0, 0, *self.size)

    def map_box(self, box: Box) -> Box:
        width, height = self.size
        x1, y1, x2, y2 = box
        return (min(max(x1 * self.scale_x + self.offset_x, 0.0), width),
                min(max(y1 * self.scale_y + self.offset_y, 0.0), height),
                min(max(x2 * self.scale_x + self.offset_x, 0.0), width),
                min(max(y2 * self.scale_y + self.offset_y, 0.0), height))

    def map_polygon(self, polygon: Polygon | None) -> Polygon | None:
        """The polygon in output pixels (points outside the frame are kept: filling clips them)."""
        if polygon is None:
            return None
        return tuple((x * self.scale_x + self.offset_x, y * self.scale_y + self.offset_y) for x, y in polygon)


def place_image(image: Image.Image, size: tuple[int, int], mode: str = "resize") -> tuple[Image.Image, Placement]:
    """The input at the output size: `resize` stretches it, `crop` fills the frame and cuts the overflow
    (centred), `fill` fits it inside and mirrors it into the rest (a picture to repaint from, without the
    streaks that repeating the border pixels draws; the control image leaves that area empty: `Placement.inner`)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, not {mode!r}")
    image = image.convert("RGB")
    (width, height), (out_w, out_h) = image.size, size
    if mode == "resize":
        placement = Placement(out_w / width, out_h / height, 0.0, 0.0, size)
        return image.resize(size, Image.Resampling.LANCZOS), placement
    scale = (max if mode == "crop" else min)(out_w / width, out_h / height)
    if mode == "crop":  # crop first, in the input's pixels, so only the visible part is ever resampled
        crop_w, crop_h = out_w / scale, out_h / scale
        left, top = (width - crop_w) / 2, (height - crop_h) / 2
        placed = image.resize(size, Image.Resampling.LANCZOS, box=(left, top, left + crop_w, top + crop_h))
        return placed, Placement(scale, scale, -left * scale, -top * scale, size)
    inner = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = np.asarray(image.resize(inner, Image.Resampling.LANCZOS))
    left, top = (out_w - inner[0]) // 2, (out_h - inner[1]) // 2
    border = cv2.BORDER_REFLECT_101 if min(inner) > 1 else cv2.BORDER_REPLICATE  # mirrored: no streaks
    pixels = cv2.copyMakeBorder(resized, top, out_h - inner[1] - top, left, out_w - inner[0] - left, border)
    return Image.fromarray(np.ascontiguousarray(pixels)), Placement(scale, scale, left, top, size,
                                                                    (left, top, left + inner[0], top + inner[1]))


def canny_edges(image: Image.Image, low: int = 100, high: int = 200) -> np.ndarray:
    """A uint8 HxW edge map (0 or 255) of `image`, with the same thresholds as the ControlNet demo."""
    if not 1 <= low <= 255 or not 1 <= high <= 255:
        raise ValueError(f"Canny thresholds must lie in 1..255, got {low} and {high}")
    gray = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)
    return cv2.Canny(gray, low, high)


def region_mask(size: tuple[int, int], detections: Iterable, padding: float = 0.0, feather: int = 0,
                grow_px: int = OUTLINE_PX) -> np.ndarray:
    """A float HxW mask, 1 inside the detections' regions: each polygon, or its box where it has none, grown by
    `grow_px` and by `padding` times its box's width and height on every side (a polygon by that share of its
    box's mean side, in every direction); `feather` softens the border over that many pixels."""
    width, height = size
    mask = np.zeros((height, width), np.float32)
    for det in detections:
        x1, y1, x2, y2 = det.box
        if det.polygon:
            shape = np.zeros((height, width), np.uint8)
            cv2.fillPoly(shape, [np.round(np.asarray(det.polygon, np.float64)).astype(np.int32)], 1)
            reach = grow_px + padding * ((x2 - x1) + (y2 - y1)) / 2
            if reach > 0:  # every pixel within `reach` of the shape (a distance map: any radius, one pass)
                shape = (cv2.distanceTransform(1 - shape, cv2.DIST_L2, 5) <= reach).astype(np.uint8)
            mask[shape > 0] = 1.0
            continue
        pad_x, pad_y = (x2 - x1) * padding + grow_px, (y2 - y1) * padding + grow_px
        left, top = max(0, int(np.floor(x1 - pad_x))), max(0, int(np.floor(y1 - pad_y)))
        right, bottom = min(width, int(np.ceil(x2 + pad_x))), min(height, int(np.ceil(y2 + pad_y)))
        mask[top:bottom, left:right] = 1.0
    if feather > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=feather / 2)
    return mask


def chosen(detections: Sequence, classes: Iterable[int] | None) -> list:
    """The detections of the chosen classes (all of them for None)."""
    wanted = set(classes) if classes is not None else None
    return [d for d in detections if wanted is None or d.class_id in wanted]


def repaint_mask(size: tuple[int, int], detections: Sequence, mode: str, classes: Iterable[int] | None = None,
                 padding: float = 0.0, feather: int = 0) -> np.ndarray:
    """What a regeneration repaints, as a float HxW mask (1: repainted, 0: kept as it is): the chosen objects'
    regions (`objects`), everything else (`background`) or the whole picture (`all`)."""
    if mode not in REGENERATE_MODES:
        raise ValueError(f"regenerate must be one of {', '.join(REGENERATE_MODES)}, not {mode!r}")
    width, height = size
    if mode == "all":
        return np.ones((height, width), np.float32)
    if mode == "detail":
        mode = "objects"
    selected = chosen(detections, classes)
    if not selected:
        raise NoMatchingDetectionsError("No detected object matches the chosen classes, so there is nothing to "
                                        f"tell apart for '{REGENERATE_MODES[mode]}'.")
    inside = region_mask(size, selected, padding, feather)
    return inside if mode == "objects" else 1.0 - inside


def build_control_image(image: Image.Image, detections: Sequence = (), *, mode: str = "full", low: int = 100,
                        high: int = 200, classes: Iterable[int] | None = None, padding: float = 0.0,
                        feather: int = 0, background_weight: float = 0.0) -> Image.Image:
    """The RGB Canny map that ControlNet Canny expects, the size of `image`.

    `full` keeps every edge; `objects` only those inside the chosen detections' regions (region_mask),
    `background` only those outside; `outlines` keeps the objects' edges and draws their outlines (polygon or
    box). `background_weight` keeps that share (0..1) of the other region's edges, dimmed. `classes` picks
    detections by class id (None: all).
    """
    if mode not in CONTROL_MODES:
        raise ValueError(f"control mode must be one of {', '.join(CONTROL_MODES)}, not {mode!r}")
    if not 0.0 <= background_weight <= 1.0:
        raise ValueError(f"background_weight must lie in 0..1, got {background_weight}")
    edges = canny_edges(image, low, high).astype(np.float32) / 255.0
    if mode != "full":
        selected = chosen(detections, classes)
        if not selected and mode != "background":
            raise NoMatchingDetectionsError("No detected object matches the chosen classes, so the "
                                            f"'{mode}' control image would be empty.")
        inside = region_mask(image.size, selected, padding, feather)
        keep = 1.0 - inside if mode == "background" else inside
        edges = edges * (keep + background_weight * (1.0 - keep))
        if mode == "outlines":
            for det in selected:
                if det.polygon:
                    points = np.round(np.asarray(det.polygon, np.float64)).astype(np.int32)
                    cv2.polylines(edges, [points], True, 1.0, 1)
                else:
                    x1, y1, x2, y2 = (int(round(v)) for v in det.box)
                    cv2.rectangle(edges, (x1, y1), (x2 - 1, y2 - 1), 1.0, 1)
    gray = np.round(edges * 255).astype(np.uint8)
    return Image.fromarray(np.stack([gray] * 3, axis=-1))


def mask_share(mask: Image.Image) -> float:
    """How much of the picture a repaint mask repaints (a soft mask's border counts by its weight): the preview
    and the run card say the same number."""
    return round(float(np.asarray(mask, np.float32).mean() / 255.0), 4)


def overlay_mask(image: Image.Image, mask: Image.Image, color: tuple[int, int, int] = (255, 64, 64),
                 opacity: float = 0.45) -> Image.Image:
    """`image` with the mask's area tinted (in proportion to the mask): what a regeneration will repaint."""
    weight = np.asarray(mask.convert("L").resize(image.size), np.float32)[..., None] / 255.0 * opacity
    pixels = np.asarray(image.convert("RGB"), np.float32)
    tinted = pixels * (1.0 - weight) + np.asarray(color, np.float32) * weight
    return Image.fromarray(np.round(tinted).astype(np.uint8))


def outline_mask(image: Image.Image, mask: Image.Image, color: tuple[int, int, int] = (255, 48, 48)) -> Image.Image:
    """`image` with the border of the mask's inside (where it is at least half) drawn over it."""
    inside = (np.asarray(mask.convert("L").resize(image.size)) >= 128).astype(np.uint8)
    contours, _ = cv2.findContours(inside, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    canvas = np.ascontiguousarray(np.asarray(image.convert("RGB")).copy())
    cv2.drawContours(canvas, contours, -1, color, max(1, round(min(image.size) / 200)))
    return Image.fromarray(canvas)


def edge_map_control(image: Image.Image, invert: bool = False) -> Image.Image:
    """A control image the person drew or exported already: grey levels kept, black edges flipped if asked."""
    gray = np.asarray(image.convert("L"))
    if invert:
        gray = 255 - gray
    return Image.fromarray(np.stack([gray] * 3, axis=-1))


def edge_fidelity(generated: Image.Image, control: Image.Image, tolerance_px: int = 2, low: int = 100,
                  high: int = 200, mask: Image.Image | None = None) -> dict[str, float]:
    """How closely an output followed its control map: Canny of the output against the map's edges.

    precision: share of the output's edges within `tolerance_px` of a control edge; recall: share of the
    control edges within `tolerance_px` of an output edge; f1: their harmonic mean. All in 0..1.

    F1 alone misleads: an output full of edges (noise, say) lands near some control edge by chance, the more
    so the denser the control. `score` corrects for chance: an edge map unrelated to the control, of the
    output's density, would reach precision = the share of the picture near a control edge and recall = the
    share near an output edge; `score` = (f1 - that chance f1) / (1 - chance f1). About 0 for anything unrelated
    to the control (noise, another photo), 1 for the control itself, negative when edges avoid the control.

    With a repaint `mask` ("L", 255: repainted) everything is counted inside it only: the untouched pixels are the
    photo's own and would score a noise repaint of a small object as a good one.
    """
    if generated.size != control.size:
        generated = generated.resize(control.size, Image.Resampling.LANCZOS)
    made = canny_edges(generated, low, high) > 0
    wanted = np.asarray(control.convert("L")) > 127
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance_px + 1, 2 * tolerance_px + 1))
    near_wanted = cv2.dilate(wanted.astype(np.uint8), kernel) > 0
    near_made = cv2.dilate(made.astype(np.uint8), kernel) > 0
    if mask is not None:
        inside = np.asarray(mask.convert("L").resize(control.size, Image.Resampling.NEAREST)) > 127
        inside |= not inside.any()  # nothing repainted: the whole picture
        made, wanted, near_wanted, near_made = made[inside], wanted[inside], near_wanted[inside], near_made[inside]
    precision = float((made & near_wanted).sum() / made.sum()) if made.any() else 0.0
    recall = float((wanted & near_made).sum() / wanted.sum()) if wanted.any() else 0.0
    f1 = _harmonic_mean(precision, recall)
    chance = _harmonic_mean(float(near_wanted.mean()), float(near_made.mean())) if made.any() else 0.0
    score = (f1 - chance) / (1.0 - chance) if chance < 1.0 else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "score": round(max(score, -1.0), 4)}


def _harmonic_mean(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b else 0.0
