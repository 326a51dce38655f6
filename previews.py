"""Cheap previews: what the page shows before a run, computed once per input and reused by every rerun.

Streamlit reruns the page on every widget event. Without these caches each rerun decoded the upload,
ran YOLO and ran Canny again. Here:
- an upload is decoded once per content (keyed by a hash of its bytes), a bad one refused once;
- detections are computed once per (image, confidence, IoU, classes): a Canny slider never runs the detector;
- the control image is rebuilt from cached detections, which takes milliseconds, so it follows the sliders.
The caches are bounded and shared by every browser session of the server.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from detections import Detection
from generation_request import ControlPreview, GenerationRequest
from image_io import InvalidImageError, load_image
from inference_pipeline import InferencePipeline


class _LRU:
    """A small thread-safe least-recently-used map."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_make(self, key: Any, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()  # outside the lock: a slow make must not stall other keys
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.entries:
                self._items.popitem(last=False)
        return value


class Previews:
    """Decoded uploads, detections and control images for the page, from one pipeline's detector."""

    def __init__(self, pipeline: InferencePipeline, entries: int = 16) -> None:
        self.pipeline = pipeline
        self._images = _LRU(entries)
        self._detections = _LRU(entries * 4)

    def image(self, data: bytes | str | Path) -> tuple[Any, str]:
        """The RGB image of an upload's bytes (or a file path) and the key that names it in the caches.
        Raises InvalidImageError, with the same message each time, for what cannot be used."""
        if isinstance(data, (str, Path)):
            key = f"path:{Path(data).resolve()}"
        else:
            key = "sha1:" + hashlib.sha1(data).hexdigest()

        def decode() -> Any:
            try:
                settings = self.pipeline.settings
                return load_image(data, max_pixels=settings.max_pixels, max_aspect=settings.max_aspect)
            except InvalidImageError as exc:
                return exc

        decoded = self._images.get_or_make(key, decode)
        if isinstance(decoded, InvalidImageError):
            raise decoded
        return decoded, key

    def detections(self, image: Any, key: str, request: GenerationRequest) -> list[Detection]:
        """The detector's answer for this image and the request's detection settings, computed once."""
        classes = tuple(sorted(request.detect_classes)) if request.detect_classes else None
        return self._detections.get_or_make(
            (key, request.detect_conf, request.detect_iou, classes),
            lambda: self.pipeline.detect(image, request.detect_conf, request.detect_iou, classes))

    def preview(self, image: Any, key: str, request: GenerationRequest) -> ControlPreview:
        """Detections (cached) and the control image this request would use, with the repaint mask when it
        repaints part of the picture (rebuilt: milliseconds)."""
        return self.pipeline.preview_from(image, self.detections(image, key, request), request)
