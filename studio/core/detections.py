"""Detections as plain data, and the overlay drawn with OpenCV (no font download, unlike Ultralytics' plot)."""

from __future__ import annotations

import colorsys
from dataclasses import asdict, dataclass

import cv2
import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Detection:
    """One detected object; `box` is (x1, y1, x2, y2) in pixels of the input image, and `polygon` its outline
    there ((x, y) points) when a segmentation model found it (None for a box-only detector)."""

    label: str
    class_id: int
    confidence: float
    box: tuple[float, float, float, float]
    polygon: tuple[tuple[float, float], ...] | None = None

    def as_row(self) -> dict[str, object]:
        row = asdict(self)
        row["confidence"] = round(self.confidence, 3)
        row["box"] = [round(v, 1) for v in self.box]
        row["polygon"] = f"{len(self.polygon)} points" if self.polygon else "box only"
        return row


def class_color(class_id: int) -> tuple[int, int, int]:
    """A stable, well-separated RGB colour per class (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((class_id * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: Image.Image, detections: list[Detection]) -> Image.Image:
    """The image with a labelled box per detection."""
    canvas = np.ascontiguousarray(np.asarray(image.convert("RGB")).copy())
    thickness = max(1, round(min(canvas.shape[:2]) / 300))
    for det in detections:
        color = class_color(det.class_id)
        x1, y1, x2, y2 = (int(round(v)) for v in det.box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness)
        text = f"{det.label} {det.confidence:.2f}"
        scale = 0.4 * thickness
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = max(0, y1 - th - baseline - 2)
        cv2.rectangle(canvas, (x1, top), (x1 + tw + 2, top + th + baseline + 2), color, -1)
        cv2.putText(canvas, text, (x1 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness,
                    cv2.LINE_AA)
    return Image.fromarray(canvas)
