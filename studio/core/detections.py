"""Detections as plain data, and the overlay drawn with OpenCV (no font download, unlike Ultralytics' plot)."""

from __future__ import annotations

import colorsys
from dataclasses import asdict, dataclass, replace

import cv2
import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Detection:
    """One detected object; `box` is (x1, y1, x2, y2) in pixels of the input image, `polygon` its outline
    there ((x, y) points) when a segmentation model found it (None for a box-only detector), and `id` its place
    in the image's list (`numbered`), by which a request picks it."""

    label: str
    class_id: int
    confidence: float
    box: tuple[float, float, float, float]
    polygon: tuple[tuple[float, float], ...] | None = None
    id: int | None = None

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    def as_row(self) -> dict[str, object]:
        row = {"id": self.id, **asdict(self)}
        row["confidence"] = round(self.confidence, 3)
        row["box"] = [round(v, 1) for v in self.box]
        row["polygon"] = f"{len(self.polygon)} points" if self.polygon else "box only"
        return row


def numbered(detections: list[Detection]) -> list[Detection]:
    """The stable order every list of detections is shown and picked in: most confident first, ties left to
    right (then top to bottom); each detection's `id` is its place in it."""
    ordered = sorted(detections, key=lambda d: (-d.confidence, d.box[0], d.box[1]))
    return [replace(d, id=i) for i, d in enumerate(ordered)]


def with_ids(detections: list[Detection]) -> list[Detection]:
    """Detections as given, those without an id numbered by their place in the list."""
    return [d if d.id is not None else replace(d, id=i) for i, d in enumerate(detections)]


MAX_NAMES = 16  # things one request may find by name: each is a class of the open-vocabulary segmenter


def names_to_find(text: str) -> tuple[str, ...]:
    """The things a "find by name" text names: comma-separated, trimmed, lower-cased, each once, in order
    ("the wooden door, Logo" -> ("the wooden door", "logo"))."""
    names = (" ".join(part.split()).lower() for part in text.split(","))
    return tuple(dict.fromkeys(name for name in names if name))


def class_color(class_id: int) -> tuple[int, int, int]:
    """A stable, well-separated RGB colour per class (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((class_id * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: Image.Image, detections: list[Detection],
                    highlight: tuple[int, ...] | None = None) -> Image.Image:
    """The image with a labelled box per detection ("#id label confidence"); the ids in `highlight` are drawn
    three times as thick and the others dimmed, so a person sees which objects they picked."""
    canvas = np.ascontiguousarray(np.asarray(image.convert("RGB")).copy())
    base = max(1, round(min(canvas.shape[:2]) / 300))
    for det in detections:
        picked = highlight is not None and det.id in highlight
        color = class_color(det.class_id) if highlight is None or picked else (128, 128, 128)
        thickness = base * 3 if picked else base
        x1, y1, x2, y2 = (int(round(v)) for v in det.box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness)
        number = f"#{det.id} " if det.id is not None else ""
        text = f"{number}{det.label} {det.confidence:.2f}"
        scale = 0.4 * base
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, base)
        top = max(0, y1 - th - baseline - 2)
        cv2.rectangle(canvas, (x1, top), (x1 + tw + 2, top + th + baseline + 2), color, -1)
        cv2.putText(canvas, text, (x1 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), base,
                    cv2.LINE_AA)
    return Image.fromarray(canvas)
