"""Ultralytics YOLO behind its own lock, answering with plain `Detection`s (boxes, and outlines from
segmentation models, in the image's pixels), most confident first, each with its id (detections.numbered)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from studio.core.detections import Detection, numbered

log = logging.getLogger(__name__)


def polygon(outline: Any) -> tuple[tuple[float, float], ...] | None:
    """A segmentation mask's outline (Ultralytics' points in image pixels) as plain data; None without one."""
    if outline is None or len(outline) < 3:
        return None
    return tuple((round(float(x), 1), round(float(y), 1)) for x, y in outline)


class Detector:
    """One YOLO model on one device. Its lock is not the GPU lock: a preview's detection never waits for a
    generation, nor a generation for a preview."""

    def __init__(self, model: Any, device: str, on_device: Callable[[], AbstractContextManager[None]]) -> None:
        self.model, self.device, self.on_device = model, device, on_device
        self.names = {int(k): str(v) for k, v in model.names.items()}
        self.runs = 0  # how often the model ran: the page's caches are judged by it
        self._lock = threading.Lock()

    def __call__(self, image: Any, conf: float = 0.25, iou: float = 0.45,
                 classes: tuple[int, ...] | list[int] | None = None) -> list[Detection]:
        with self._lock, self.on_device():
            self.runs += 1
            result = self.model.predict(image, conf=conf, iou=iou, classes=list(classes) if classes else None,
                                        device=self.device, half=self.device != "cpu", verbose=False)[0]
        height, width = result.orig_shape
        log.info("detector ran on %s (%dx%d): %d objects", self.device, width, height, len(result.boxes))
        outlines = result.masks.xy if result.masks is not None else [None] * len(result.boxes)
        names = result.names  # a YOLOE's classes change with the names asked for (engine/name_finder.py)
        found = [Detection(str(names[int(cls)]), int(cls), float(score), tuple(float(v) for v in box),
                           polygon(outline))
                 for box, score, cls, outline in zip(result.boxes.xyxy.tolist(), result.boxes.conf.tolist(),
                                                     result.boxes.cls.tolist(), outlines)]
        return numbered(found)
